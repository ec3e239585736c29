-- One row per person and institution. The age band's lower bound is kept as a
-- number so intermediate models can pick the oldest band without string sorts.
with source as (

    select * from {{ source('deidentify', 'patients') }}

),

renamed as (

    select
        {{ dbt.concat(["patient_pseudonym", "'@'", "institution"]) }} as patient_institution_key,
        cast(patient_pseudonym as {{ dbt.type_string() }}) as patient_pseudonym,
        cast(institution as {{ dbt.type_string() }}) as institution,
        cast(coalesce(sex, 'unknown') as {{ dbt.type_string() }}) as sex,
        cast(age_band as {{ dbt.type_string() }}) as age_band,
        cast(
            nullif(replace({{ dbt.split_part('age_band', "'-'", 1) }}, '+', ''), '')
            as {{ dbt.type_int() }}
        ) as age_band_lower

    from source

)

select * from renamed
