with source as (

    select * from {{ source('deidentify', 'conditions') }}

),

renamed as (

    select
        cast(patient_pseudonym as {{ dbt.type_string() }}) as patient_pseudonym,
        cast(institution as {{ dbt.type_string() }}) as institution,
        cast(icd10 as {{ dbt.type_string() }}) as icd10_code,
        cast(icd10_category as {{ dbt.type_string() }}) as icd10_category,
        cast(clinical_status as {{ dbt.type_string() }}) as clinical_status,
        cast(onset_year as {{ dbt.type_int() }}) as onset_year

    from source

)

select * from renamed
