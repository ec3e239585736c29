-- Within each summary row: reason columns (plus `other`) add up to the
-- records quarantined, stages add up to it too, and consent states add up to
-- the persons. Returns the rows that do not add up.
{{ config(meta={'dagster': {'ref': {'name': 'institution_quality_summary'}}}) }}

select institution
from {{ ref('institution_quality_summary') }}
where records_quarantined <> (
        {%- for reason in var('quarantine_reason_codes') %}
        quarantined_{{ reason }} +
        {%- endfor %}
        quarantined_other_reason
    )
    or records_quarantined <> (
        {%- for stage in var('quarantine_stages') %}
        records_quarantined_{{ stage }}{% if not loop.last %} +{% endif %}
        {%- endfor %}
    )
    or files_landed <> files_stored + files_quarantined
    or persons <> (
        {%- for status in var('consent_statuses') %}
        consent_{{ status }}{% if not loop.last %} +{% endif %}
        {%- endfor %}
    )
