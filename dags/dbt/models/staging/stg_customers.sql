-- The customer's country on file (the CRM's current value).
select
    customer_id,
    country
from {{ source('raw', 'customers') }}
where customer_id is not null
