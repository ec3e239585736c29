-- One row per person and disease cohort (vars.cohorts) the person has a
-- diagnosis for: any institution, any clinical status. Consent is applied in
-- the cohort marts, not here.
{%- set cohorts = var('cohorts') %}

with conditions as (

    select * from {{ ref('stg_deidentify__conditions') }}

),

cohort_conditions as (

    {% for cohort_name, definition in cohorts.items() %}
    select
        '{{ cohort_name }}' as cohort_name,
        patient_pseudonym,
        institution,
        icd10_code,
        clinical_status,
        onset_year
    from conditions
    where icd10_category in (
        {%- for category in definition['icd10_categories'] -%}
        '{{ category }}'{% if not loop.last %}, {% endif %}
        {%- endfor -%}
    )
    {% if not loop.last %}union all{% endif %}
    {% endfor %}

),

codes as (

    select
        patient_pseudonym,
        cohort_name,
        {{ dbt.listagg("icd10_code", "','", "order by icd10_code") }} as icd10_codes

    from (select distinct patient_pseudonym, cohort_name, icd10_code from cohort_conditions) as distinct_codes
    group by patient_pseudonym, cohort_name

),

aggregated as (

    select
        patient_pseudonym,
        cohort_name,
        count(*) as condition_records,
        count(distinct institution) as institutions_recording,
        min(onset_year) as first_onset_year,
        max(onset_year) as latest_onset_year,
        max(case when clinical_status = 'active' then 1 else 0 end) = 1 as has_active_condition

    from cohort_conditions
    group by patient_pseudonym, cohort_name

),

final as (

    select
        {{ dbt.concat(["aggregated.patient_pseudonym", "':'", "aggregated.cohort_name"]) }} as person_cohort_key,
        aggregated.patient_pseudonym,
        aggregated.cohort_name,
        aggregated.condition_records,
        aggregated.institutions_recording,
        codes.icd10_codes,
        aggregated.first_onset_year,
        aggregated.latest_onset_year,
        aggregated.has_active_condition

    from aggregated
    inner join codes
        on aggregated.patient_pseudonym = codes.patient_pseudonym
        and aggregated.cohort_name = codes.cohort_name

)

select * from final
