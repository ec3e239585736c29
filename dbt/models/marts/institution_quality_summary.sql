-- One row per institution (and `(none)` for files outside any source folder):
-- what it delivered, what was refused and why, whom it holds, their consent.
--   files_*            the file ledger: one row per distinct file content
--   records_quarantined* / quarantined_<reason>   the quarantine log (files
--                      refused at intake count there too, as one record each)
--   persons, consent_*  de-identified persons known at the institution; a person
--                      known at two institutions counts at both
{%- set reasons = var('quarantine_reason_codes') %}
{%- set consent_statuses = var('consent_statuses') %}
{%- set bigint = dbt.type_bigint() %}

with ledger as (

    select * from {{ ref('stg_audit__file_ledger') }}

),

quarantine as (

    select * from {{ ref('int_quarantine_by_institution') }}

),

patients as (

    select * from {{ ref('stg_deidentify__patients') }}

),

persons as (

    select * from {{ ref('int_persons') }}

),

institutions as (

    select institution from ledger
    union
    select institution from quarantine
    union
    select institution from patients

),

files as (

    select
        institution,
        count(*) as files_landed,
        sum(case when file_status = 'stored' then 1 else 0 end) as files_stored,
        sum(case when file_status = 'quarantined' then 1 else 0 end) as files_quarantined,
        sum(size_bytes) as bytes_landed,
        min(landed_at_utc) as first_landed_at_utc,
        max(landed_at_utc) as last_landed_at_utc

    from ledger
    group by institution

),

records as (

    select
        institution,
        sum(records_quarantined) as records_quarantined,
        {%- for stage in var('quarantine_stages') %}
        sum(case when stage = '{{ stage }}' then records_quarantined else 0 end) as records_quarantined_{{ stage }},
        {%- endfor %}
        {%- for reason in reasons %}
        sum(case when reason_code = '{{ reason }}' then records_quarantined else 0 end) as quarantined_{{ reason }},
        {%- endfor %}
        sum(
            case when reason_code not in (
                {%- for reason in reasons %}'{{ reason }}'{% if not loop.last %}, {% endif %}{% endfor -%}
            ) then records_quarantined else 0 end
        ) as quarantined_other_reason

    from quarantine
    group by institution

),

consent as (

    select
        patients.institution,
        count(distinct patients.patient_pseudonym) as persons,
        {%- for status in consent_statuses %}
        count(distinct case when persons.consent_status = '{{ status }}' then patients.patient_pseudonym end)
            as consent_{{ status }}{% if not loop.last %},{% endif %}
        {%- endfor %}

    from patients
    inner join persons
        on patients.patient_pseudonym = persons.patient_pseudonym
    group by patients.institution

),

final as (

    select
        institutions.institution,
        cast(coalesce(files.files_landed, 0) as {{ bigint }}) as files_landed,
        cast(coalesce(files.files_stored, 0) as {{ bigint }}) as files_stored,
        cast(coalesce(files.files_quarantined, 0) as {{ bigint }}) as files_quarantined,
        cast(coalesce(files.bytes_landed, 0) as {{ bigint }}) as bytes_landed,
        files.first_landed_at_utc,
        files.last_landed_at_utc,
        cast(coalesce(records.records_quarantined, 0) as {{ bigint }}) as records_quarantined,
        {%- for stage in var('quarantine_stages') %}
        cast(coalesce(records.records_quarantined_{{ stage }}, 0) as {{ bigint }}) as records_quarantined_{{ stage }},
        {%- endfor %}
        {%- for reason in reasons %}
        cast(coalesce(records.quarantined_{{ reason }}, 0) as {{ bigint }}) as quarantined_{{ reason }},
        {%- endfor %}
        cast(coalesce(records.quarantined_other_reason, 0) as {{ bigint }}) as quarantined_other_reason,
        cast(coalesce(consent.persons, 0) as {{ bigint }}) as persons,
        {%- for status in consent_statuses %}
        cast(coalesce(consent.consent_{{ status }}, 0) as {{ bigint }}) as consent_{{ status }}
        {%- if not loop.last %},{% endif %}
        {%- endfor %}

    from institutions
    left join files
        on institutions.institution = files.institution
    left join records
        on institutions.institution = records.institution
    left join consent
        on institutions.institution = consent.institution

)

select * from final
