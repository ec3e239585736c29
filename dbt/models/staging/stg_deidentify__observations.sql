with source as (

    select * from {{ source('deidentify', 'observations') }}

),

renamed as (

    select
        cast(patient_pseudonym as {{ dbt.type_string() }}) as patient_pseudonym,
        cast(institution as {{ dbt.type_string() }}) as institution,
        cast(concept as {{ dbt.type_string() }}) as concept,
        cast(loinc as {{ dbt.type_string() }}) as loinc_code,
        cast(value as {{ type_double() }}) as measurement_value,
        cast(unit as {{ dbt.type_string() }}) as ucum_unit,
        cast(effective_year as {{ dbt.type_int() }}) as effective_year

    from source

)

select * from renamed
