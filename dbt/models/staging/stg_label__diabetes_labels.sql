with source as (

    select * from {{ source('label', 'diabetes_labels') }}

),

renamed as (

    select
        cast(patient_pseudonym as {{ dbt.type_string() }}) as patient_pseudonym,
        cast(label as {{ dbt.type_int() }}) as diabetes_label,
        cast(label_source as {{ dbt.type_string() }}) as label_source,
        cast(institutions as {{ dbt.type_string() }}) as institutions

    from source

)

select * from renamed
