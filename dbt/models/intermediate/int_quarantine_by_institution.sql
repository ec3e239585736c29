-- Quarantine log counted per institution, stage and reason code.
with quarantine as (

    select * from {{ ref('stg_audit__quarantine') }}

),

final as (

    select
        {{ dbt.concat(["institution", "'|'", "stage", "'|'", "reason_code"]) }} as institution_stage_reason_key,
        institution,
        stage,
        reason_code,
        count(*) as records_quarantined,
        count(distinct source_sha256) as files_affected

    from quarantine
    group by institution, stage, reason_code

)

select * from final
