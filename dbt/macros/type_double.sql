{#
  A 64-bit float on every target. dbt.type_float() renders `float`, which is
  4 bytes on DuckDB (REAL) but 8 bytes on PostgreSQL: measurements would be
  rounded differently on the two targets.
#}
{% macro type_double() -%}
    double precision
{%- endmacro %}
