{#- The run's interval end as a SQL timestamp literal, from var('as_of') ("YYYY-MM-DD[ HH:MM[:SS[.ffffff]]]").
    Fails loudly when the var is missing or malformed, so that a run can never silently use "now". -#}
{% macro as_of_timestamp() -%}
    {%- set as_of = var('as_of', none) -%}
    {%- if not execute -%}
        cast('1970-01-01 00:00:00' as timestamp)
    {%- else -%}
        {%- if as_of is none or (as_of | string | trim) == '' -%}
            {{ exceptions.raise_compiler_error(
                "var 'as_of' is required: the interval end of the run, e.g. --vars '{as_of: \"2011-06-01 00:00:00\"}'") }}
        {%- endif -%}
        {%- set text = as_of | string | trim | replace('T', ' ') -%}
        {%- if not modules.re.match('^[0-9]{4}-[0-9]{2}-[0-9]{2}( [0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]{1,6})?)?)?$', text) -%}
            {{ exceptions.raise_compiler_error(
                "var 'as_of' must look like 'YYYY-MM-DD HH:MM:SS' (a naive UTC timestamp), got " ~ (as_of | string)) }}
        {%- endif -%}
        cast('{{ text }}' as timestamp)
    {%- endif -%}
{%- endmacro %}
