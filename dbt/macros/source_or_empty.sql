{#
  A source table, or an empty one of the declared columns when the table does
  not exist yet: a home whose landing zone never held a file has no file
  ledger, and its marts must still build (empty, well typed) rather than fail.
  `columns`: [(name, type), ...] in the source's column order.
#}
{% macro source_or_empty(source_name, table_name, columns) -%}
    {%- set relation = source(source_name, table_name) -%}
    {%- set existing = adapter.get_relation(database=relation.database, schema=relation.schema,
                                            identifier=relation.identifier) if execute else relation -%}
    {%- if existing is not none -%}
    select * from {{ relation }}
    {%- else -%}
    select
        {%- for name, type in columns %}
        cast(null as {{ type }}) as {{ name }}{{ "," if not loop.last }}
        {%- endfor %}
    where 1 = 0
    {%- endif -%}
{%- endmacro %}
