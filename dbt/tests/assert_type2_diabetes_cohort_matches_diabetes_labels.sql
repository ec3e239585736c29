-- Two implementations of one rule must agree: the dbt E11 cohort and the
-- label stage's positive labels (Python, label/diabetes_labels) are the same
-- persons. Returns persons in one but not the other.
{{ config(meta={'dagster': {'ref': {'name': 'cohort_type2_diabetes'}}}) }}

with cohort as (

    select patient_pseudonym from {{ ref('cohort_type2_diabetes') }}

),

positives as (

    select patient_pseudonym from {{ ref('stg_label__diabetes_labels') }}
    where diabetes_label = 1

)

select cohort.patient_pseudonym, 'in cohort, not labelled positive' as mismatch
from cohort
left join positives on cohort.patient_pseudonym = positives.patient_pseudonym
where positives.patient_pseudonym is null

union all

select positives.patient_pseudonym, 'labelled positive, not in cohort' as mismatch
from positives
left join cohort on positives.patient_pseudonym = cohort.patient_pseudonym
where cohort.patient_pseudonym is null
