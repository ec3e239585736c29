-- The encrypted source path is not carried: marts need no file names.
-- landed_at is written in UTC (ISO 8601 with +00:00). No ledger yet (nothing ever landed): no rows.
with source as (

    {{ source_or_empty('audit', 'file_ledger', [
        ('content_sha256', dbt.type_string()), ('institution', dbt.type_string()),
        ('file_kind', dbt.type_string()), ('size_bytes', dbt.type_bigint()), ('status', dbt.type_string()),
        ('reason_code', dbt.type_string()), ('source_path_ciphertext', dbt.type_string()),
        ('landed_at', dbt.type_string()), ('dagster_run_id', dbt.type_string()),
    ]) }}

),

renamed as (

    select
        cast(content_sha256 as {{ dbt.type_string() }}) as file_sha256,
        cast(coalesce(institution, '{{ var("unknown_institution") }}') as {{ dbt.type_string() }}) as institution,
        cast(file_kind as {{ dbt.type_string() }}) as file_kind,
        cast(size_bytes as {{ dbt.type_bigint() }}) as size_bytes,
        cast(status as {{ dbt.type_string() }}) as file_status,
        cast(reason_code as {{ dbt.type_string() }}) as reason_code,
        cast(landed_at as {{ dbt.type_timestamp() }}) as landed_at_utc,
        cast(dagster_run_id as {{ dbt.type_string() }}) as dagster_run_id

    from source

)

select * from renamed
