-- Cohort definition: vars.cohorts.type2_diabetes in dbt_project.yml; rule: macros/cohort_members.sql.
{{ cohort_members('type2_diabetes') }}
