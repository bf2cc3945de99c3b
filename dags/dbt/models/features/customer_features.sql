{{ config(schema=var('features_schema'), alias=var('features_table')) }}
-- One row per customer with at least one purchase (a non-cancelled invoice) before as_of.
-- The columns are exactly the entity key and the features of the spec
-- (segmentation/specs/online_retail.yaml), in the spec's order.
{%- set as_of = as_of_timestamp() %}

with lines as (

    select * from {{ ref('stg_transactions') }}

),

invoices as (

    select
        customer_id,
        invoice_no,
        max(is_cancellation) as is_cancellation,
        min(invoice_date) as invoiced_at,
        sum(line_value) as invoice_value,
        sum(quantity) as invoice_items
    from lines
    group by customer_id, invoice_no

),

purchases as (

    select
        customer_id,
        count(*) as n_purchases,
        min(invoiced_at) as first_purchase_at,
        max(invoiced_at) as last_purchase_at,
        sum(invoice_value) as gross_spend,
        sum(invoice_items) as items_bought,
        sum(
            case
                when invoiced_at >= {{ dbt.dateadd('day', -90, as_of) }}
                    then invoice_value
                else 0
            end
        ) as recent_spend
    from invoices
    where is_cancellation = 0
    group by customer_id

),

cancellations as (

    select
        customer_id,
        count(*) as n_cancellations
    from invoices
    where is_cancellation = 1
    group by customer_id

),

line_totals as (

    select
        customer_id,
        sum(line_value) as net_spend,
        count(distinct case when is_cancellation = 0 and is_product = 1 then stock_code end) as n_products
    from lines
    group by customer_id

)

select
    p.customer_id,
    cast({{ dbt.datediff('p.last_purchase_at', as_of, 'day') }} as bigint) as recency_days,
    cast(p.n_purchases as bigint) as frequency,
    cast(greatest(t.net_spend, 0) as double precision) as monetary,
    cast({{ dbt.datediff('p.first_purchase_at', as_of, 'day') }} as bigint) as tenure_days,
    cast(p.gross_spend as double precision) / p.n_purchases as avg_basket_value,
    cast(p.items_bought as double precision) / p.n_purchases as avg_items_per_invoice,
    cast(t.n_products as bigint) as distinct_products,
    cast(coalesce(c.n_cancellations, 0) as double precision)
        / (p.n_purchases + coalesce(c.n_cancellations, 0)) as cancellation_rate,
    cast(case when p.n_purchases >= 2 then 1 else 0 end as integer) as is_repeat_buyer,
    case
        when p.n_purchases >= 2
            then cast({{ dbt.datediff('p.first_purchase_at', 'p.last_purchase_at', 'day') }} as double precision)
                / (p.n_purchases - 1)
    end as days_between_purchases,
    case
        when p.gross_spend > 0
            then cast(p.recent_spend as double precision) / cast(p.gross_spend as double precision)
    end as share_of_spend_last_90d,
    cu.country
from purchases as p
inner join line_totals as t
    on t.customer_id = p.customer_id
left join cancellations as c
    on c.customer_id = p.customer_id
left join {{ ref('stg_customers') }} as cu
    on cu.customer_id = p.customer_id
