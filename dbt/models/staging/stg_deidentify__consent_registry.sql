with source as (

    select * from {{ source('deidentify', 'consent_registry') }}

),

renamed as (

    select
        cast(patient_pseudonym as {{ dbt.type_string() }}) as patient_pseudonym,
        cast(consent_status as {{ dbt.type_string() }}) as consent_status,
        cast(decided_year as {{ dbt.type_int() }}) as consent_decided_year,
        cast(consent_records as {{ dbt.type_int() }}) as consent_records

    from source

)

select * from renamed
