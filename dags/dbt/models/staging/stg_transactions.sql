-- Invoice lines of known customers strictly before the run's interval end, typed and flagged.
select
    customer_id,
    invoice_no,
    stock_code,
    invoice_date,
    cast(quantity as bigint) as quantity,
    cast(quantity as double precision) * cast(unit_price as double precision) as line_value,
    case when invoice_no like 'C%' then 1 else 0 end as is_cancellation,
    case
        when stock_code in (
            {%- for code in var('non_product_stock_codes') %}'{{ code | replace("'", "''") }}'{% if not loop.last %}, {% endif %}{% endfor -%}
        ) then 0
        else 1
    end as is_product
from {{ source('raw', 'transactions') }}
where customer_id is not null
  and invoice_date < {{ as_of_timestamp() }}
