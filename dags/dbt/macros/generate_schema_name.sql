{#- Write to exactly the configured schema (`features`), not dbt's default `<target schema>_features`:
    the warehouse contract names the schema, and the DAG reads it from the spec. -#}
{% macro generate_schema_name(custom_schema_name, node) -%}
    {%- if custom_schema_name is none -%}
        {{ target.schema }}
    {%- else -%}
        {{ custom_schema_name | trim }}
    {%- endif -%}
{%- endmacro %}
