-- Cohort definition: vars.cohorts.hyperlipidaemia in dbt_project.yml; rule: macros/cohort_members.sql.
{{ cohort_members('hyperlipidaemia') }}
