-- Cohort definition: vars.cohorts.hypertension in dbt_project.yml; rule: macros/cohort_members.sql.
{{ cohort_members('hypertension') }}
