-- Every de-identified person has exactly one feature row (the unique test
-- covers "at most one"; this covers "at least one"). Returns missing persons.
{{ config(meta={'dagster': {'ref': {'name': 'patient_features'}}}) }}

select distinct patients.patient_pseudonym
from {{ ref('stg_deidentify__patients') }} as patients
left join {{ ref('patient_features') }} as features
    on patients.patient_pseudonym = features.patient_pseudonym
where features.patient_pseudonym is null
