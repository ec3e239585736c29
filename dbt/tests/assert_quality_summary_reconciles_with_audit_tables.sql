-- The per-institution summary loses nothing: its totals equal the file
-- ledger's and the quarantine log's row counts. Returns the totals that differ.
{{ config(meta={'dagster': {'ref': {'name': 'institution_quality_summary'}}}) }}

with summary as (

    select
        sum(files_landed) as files_landed,
        sum(files_quarantined) as files_quarantined,
        sum(records_quarantined) as records_quarantined
    from {{ ref('institution_quality_summary') }}

),

ledger as (

    select
        count(*) as files_landed,
        sum(case when file_status = 'quarantined' then 1 else 0 end) as files_quarantined
    from {{ ref('stg_audit__file_ledger') }}

),

quarantine as (

    select count(*) as records_quarantined from {{ ref('stg_audit__quarantine') }}

)

select 'files_landed' as total, summary.files_landed as in_summary, ledger.files_landed as in_source
from summary cross join ledger
where coalesce(summary.files_landed, 0) <> ledger.files_landed

union all

select 'files_quarantined', summary.files_quarantined, coalesce(ledger.files_quarantined, 0)
from summary cross join ledger
where coalesce(summary.files_quarantined, 0) <> coalesce(ledger.files_quarantined, 0)

union all

select 'records_quarantined', summary.records_quarantined, quarantine.records_quarantined
from summary cross join quarantine
where coalesce(summary.records_quarantined, 0) <> quarantine.records_quarantined
