-- Rule (clause 5.1.1.1, row D1): nobody enters a disease cohort without a
-- granted research consent. Checked against the consent registry itself (not
-- the cohort's own consent column): refused, withdrawn and persons with no
-- consent record at all must be absent. Returns the offending members.
{{ config(meta={'dagster': {'ref': {'name': 'cohort_type2_diabetes'}}}) }}

{% for cohort_name in var('cohorts') %}
select
    '{{ cohort_name }}' as cohort_name,
    members.patient_pseudonym,
    coalesce(registry.consent_status, 'no consent record') as consent_status
from {{ ref('cohort_' ~ cohort_name) }} as members
left join {{ ref('stg_deidentify__consent_registry') }} as registry
    on members.patient_pseudonym = registry.patient_pseudonym
where registry.consent_status is null or registry.consent_status <> 'granted'
{% if not loop.last %}union all{% endif %}
{% endfor %}
