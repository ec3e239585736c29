-- The pixel file name is derived from image_id and is not carried.
with source as (

    select * from {{ source('deidentify', 'images') }}

),

renamed as (

    select
        cast(image_id as {{ dbt.type_string() }}) as image_id,
        cast(patient_pseudonym as {{ dbt.type_string() }}) as patient_pseudonym,
        cast(institution as {{ dbt.type_string() }}) as institution,
        cast(modality as {{ dbt.type_string() }}) as modality,
        cast("rows" as {{ dbt.type_int() }}) as pixel_rows,
        cast("columns" as {{ dbt.type_int() }}) as pixel_columns,
        cast(study_year as {{ dbt.type_int() }}) as study_year

    from source

)

select * from renamed
