{#
  A disease cohort (vars.cohorts[cohort_name]): every person with a diagnosis
  in the cohort's ICD-10 categories (any institution, any clinical status)
  AND a granted research consent -- clause 5.1.1.1 (row D1), the same rule as
  label/diabetes_labels. Persons refused, withdrawn or without a consent
  record are left out; tests/assert_cohort_members_have_granted_consent.sql
  checks the rule against the consent registry itself.
#}
{% macro cohort_members(cohort_name) %}
{%- if cohort_name not in var('cohorts') -%}
    {{ exceptions.raise_compiler_error("cohort_members: no cohort '" ~ cohort_name ~ "' in vars.cohorts") }}
{%- endif -%}

with diagnosed as (

    select * from {{ ref('int_person_conditions') }}
    where cohort_name = '{{ cohort_name }}'

),

persons as (

    select * from {{ ref('int_persons') }}

),

final as (

    select
        diagnosed.patient_pseudonym,
        diagnosed.cohort_name,
        persons.sex,
        persons.age_band,
        persons.approx_age_years,
        persons.institutions_count,
        diagnosed.condition_records,
        diagnosed.institutions_recording,
        diagnosed.icd10_codes,
        diagnosed.first_onset_year,
        diagnosed.latest_onset_year,
        diagnosed.has_active_condition,
        persons.consent_status,
        persons.consent_decided_year

    from diagnosed
    inner join persons
        on diagnosed.patient_pseudonym = persons.patient_pseudonym
    where persons.consent_status = 'granted'

)

select * from final
{% endmacro %}
