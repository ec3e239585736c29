-- The patient-level feature table: one row per de-identified person (every
-- consent state; research extracts filter on is_consented or use the cohort
-- marts). Per measured concept: the latest-year mean and the all-time median.
{%- set concepts = var('measurement_concepts') %}
{%- set cohorts = var('cohorts') %}

with persons as (

    select * from {{ ref('int_persons') }}

),

measurements as (

    select * from {{ ref('int_person_measurements') }}

),

diagnoses as (

    select * from {{ ref('int_person_conditions') }}

),

observation_counts as (

    select patient_pseudonym, count(*) as observation_records
    from {{ ref('stg_deidentify__observations') }}
    group by patient_pseudonym

),

condition_counts as (

    select patient_pseudonym, count(*) as condition_records
    from {{ ref('stg_deidentify__conditions') }}
    group by patient_pseudonym

),

image_counts as (

    select patient_pseudonym, count(*) as images
    from {{ ref('stg_deidentify__images') }}
    group by patient_pseudonym

),

measurements_wide as (

    select
        patient_pseudonym,
        {%- for concept in concepts %}
        max(case when concept = '{{ concept }}' then latest_value end) as {{ concept }}_latest,
        max(case when concept = '{{ concept }}' then median_value end) as {{ concept }}_median
        {%- if not loop.last %},{% endif %}
        {%- endfor %}

    from measurements
    group by patient_pseudonym

),

cohort_flags as (

    select
        patient_pseudonym,
        {%- for cohort_name in cohorts %}
        max(case when cohort_name = '{{ cohort_name }}' then 1 else 0 end) = 1 as has_{{ cohort_name }}
        {%- if not loop.last %},{% endif %}
        {%- endfor %}

    from diagnoses
    group by patient_pseudonym

),

final as (

    select
        persons.patient_pseudonym,
        persons.sex,
        persons.age_band,
        persons.approx_age_years,
        persons.institutions_count,
        persons.institutions,
        persons.consent_status,
        persons.is_consented,
        {%- for cohort_name in cohorts %}
        coalesce(cohort_flags.has_{{ cohort_name }}, false) as has_{{ cohort_name }},
        {%- endfor %}
        cast(coalesce(observation_counts.observation_records, 0) as {{ dbt.type_bigint() }}) as observation_records,
        cast(coalesce(condition_counts.condition_records, 0) as {{ dbt.type_bigint() }}) as condition_records,
        cast(coalesce(image_counts.images, 0) as {{ dbt.type_bigint() }}) as images,
        {%- for concept in concepts %}
        measurements_wide.{{ concept }}_latest,
        measurements_wide.{{ concept }}_median
        {%- if not loop.last %},{% endif %}
        {%- endfor %}

    from persons
    left join measurements_wide
        on persons.patient_pseudonym = measurements_wide.patient_pseudonym
    left join cohort_flags
        on persons.patient_pseudonym = cohort_flags.patient_pseudonym
    left join observation_counts
        on persons.patient_pseudonym = observation_counts.patient_pseudonym
    left join condition_counts
        on persons.patient_pseudonym = condition_counts.patient_pseudonym
    left join image_counts
        on persons.patient_pseudonym = image_counts.patient_pseudonym

)

select * from final
