-- One row per person and concept. Dates are generalised to years, so the
-- "latest" value is the mean of the values in the person's latest year; the
-- median over all years is what the t2d_risk model spec uses (aggregation: median).
with observations as (

    select * from {{ ref('stg_deidentify__observations') }}

),

aggregated as (

    select
        patient_pseudonym,
        concept,
        count(*) as measurements,
        min(effective_year) as first_year,
        max(effective_year) as latest_year,
        cast(percentile_cont(0.5) within group (order by measurement_value) as {{ type_double() }}) as median_value,
        min(measurement_value) as min_value,
        max(measurement_value) as max_value

    from observations
    group by patient_pseudonym, concept

),

latest as (

    select
        observations.patient_pseudonym,
        observations.concept,
        cast(avg(observations.measurement_value) as {{ type_double() }}) as latest_value

    from observations
    inner join aggregated
        on observations.patient_pseudonym = aggregated.patient_pseudonym
        and observations.concept = aggregated.concept
        and observations.effective_year = aggregated.latest_year
    group by observations.patient_pseudonym, observations.concept

),

final as (

    select
        {{ dbt.concat(["aggregated.patient_pseudonym", "':'", "aggregated.concept"]) }} as person_concept_key,
        aggregated.patient_pseudonym,
        aggregated.concept,
        aggregated.measurements,
        aggregated.first_year,
        aggregated.latest_year,
        latest.latest_value,
        aggregated.median_value,
        aggregated.min_value,
        aggregated.max_value

    from aggregated
    left join latest
        on aggregated.patient_pseudonym = latest.patient_pseudonym
        and aggregated.concept = latest.concept

)

select * from final
