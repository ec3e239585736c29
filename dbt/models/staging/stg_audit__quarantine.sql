-- The free-text reason is not carried (the code is what marts aggregate).
with source as (

    select * from {{ source('audit', 'quarantine') }}

),

renamed as (

    select
        cast(stage as {{ dbt.type_string() }}) as stage,
        cast(asset as {{ dbt.type_string() }}) as quarantined_by_asset,
        cast(coalesce(institution, '{{ var("unknown_institution") }}') as {{ dbt.type_string() }}) as institution,
        cast(source_object as {{ dbt.type_string() }}) as source_sha256,
        cast("position" as {{ dbt.type_bigint() }}) as source_position,
        cast(resource_type as {{ dbt.type_string() }}) as resource_type,
        cast(reason_code as {{ dbt.type_string() }}) as reason_code

    from source

)

select * from renamed
