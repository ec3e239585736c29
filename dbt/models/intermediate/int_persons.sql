-- One row per person (pseudonym), across every institution that knows them.
--   sex:      the one known value; `unknown` when none is known or institutions disagree
--   age_band: the oldest band recorded (bands are taken at each institution's
--             latest observation, so the oldest is the most recent)
--   consent:  the registry's state; persons without a consent record are `unknown`
with patients as (

    select * from {{ ref('stg_deidentify__patients') }}

),

consent as (

    select * from {{ ref('stg_deidentify__consent_registry') }}

),

per_person as (

    select
        patient_pseudonym,
        count(distinct institution) as institutions_count,
        count(distinct case when sex <> 'unknown' then sex end) as known_sexes,
        max(case when sex <> 'unknown' then sex end) as known_sex,
        max(age_band_lower) as age_band_lower

    from patients
    group by patient_pseudonym

),

oldest_band as (

    select
        patients.patient_pseudonym,
        max(patients.age_band) as age_band

    from patients
    inner join per_person
        on patients.patient_pseudonym = per_person.patient_pseudonym
        and patients.age_band_lower = per_person.age_band_lower
    group by patients.patient_pseudonym

),

institution_lists as (

    select
        patient_pseudonym,
        {{ dbt.listagg("institution", "','", "order by institution") }} as institutions

    from (select distinct patient_pseudonym, institution from patients) as distinct_institutions
    group by patient_pseudonym

),

final as (

    select
        per_person.patient_pseudonym,
        case when per_person.known_sexes = 1 then per_person.known_sex else 'unknown' end as sex,
        oldest_band.age_band,
        per_person.age_band_lower,
        -- midpoint of the band (45-49 -> 47.5; 90+ -> 92.5), as the curate stage computes it
        cast(per_person.age_band_lower as {{ type_double() }}) + 2.5 as approx_age_years,
        per_person.institutions_count,
        institution_lists.institutions,
        coalesce(consent.consent_status, 'unknown') as consent_status,
        consent.consent_decided_year,
        case when consent.consent_status = 'granted' then true else false end as is_consented

    from per_person
    left join oldest_band
        on per_person.patient_pseudonym = oldest_band.patient_pseudonym
    left join institution_lists
        on per_person.patient_pseudonym = institution_lists.patient_pseudonym
    left join consent
        on per_person.patient_pseudonym = consent.patient_pseudonym

)

select * from final
