-- pgsidecar demo catalog schema: a retailer's product catalog, stock, orders
-- and payments (80,000 SKUs, 4 warehouses, three payment processors).
--
-- Idempotency: every object is created with IF NOT EXISTS, so re-running this
-- file is safe and NEVER drops data. The flip side: it does not migrate
-- either. A table that already exists is left exactly as it is, even if its
-- definition here has changed since; to pick up a changed definition, drop the
-- database (deploy/local/demo.sh destroy && deploy/local/demo.sh up). We chose
-- this over drop-and-create because demo.sh applies this file on every `up`,
-- and an `up` must never silently wipe orders placed during a demo.
--
-- Load order: this file, then sql/invalidation.sql (cache-invalidation
-- triggers), then sql/demo-data.sql (data). Everything goes into the first
-- schema on search_path (public in the demo) and is owned by whoever runs
-- the file (the `shop` role in the demo).
--
-- Typical queries and the index that serves each:
--   product page      WHERE sku_id = $1 on products, prices, inventory
--                     -> the primary keys (inventory's starts with sku_id).
--   category page     WHERE category_id = $1 ORDER BY name LIMIT 24
--                     -> products_category_name_idx, read in order, stops at 24.
--                     ORDER BY price: JOIN prices USING (sku_id) WHERE
--                     category_id = $1 ORDER BY amount LIMIT 24 -> the same
--                     index finds the category's ~425 SKUs, a nested loop
--                     over prices_pkey joins them, a top-N sort keeps 24
--                     (~1.5 ms). The planner picks that nested loop only with
--                     random_page_cost near 1 (SSD, data cached: demo.sh sets
--                     1.1); at the default 4 it hashes all of prices (~8 ms).
--                     An index cannot span two tables; copy the price into
--                     products only if categories grow much larger.
--   order history     WHERE customer_id = $1 ORDER BY created_at DESC
--                     -> orders_customer_created_idx.
--   payments          WHERE order_id = $1 -> payments_order_idx;
--                     WHERE processor = $1 AND created_at >= $2
--                     -> payments_processor_created_idx;
--                     webhook lookup by (processor, external_ref)
--                     -> payments_processor_external_ref_key (unique: a
--                     processor's id is recorded at most once).

CREATE TABLE IF NOT EXISTS categories (
    category_id integer PRIMARY KEY,
    parent_id   integer REFERENCES categories (category_id),
    name        text NOT NULL,
    slug        text NOT NULL UNIQUE
);
CREATE INDEX IF NOT EXISTS categories_parent_idx ON categories (parent_id);

CREATE TABLE IF NOT EXISTS products (
    sku_id      bigint PRIMARY KEY,
    name        text NOT NULL,
    description text,
    category_id integer NOT NULL REFERENCES categories (category_id),
    brand       text,
    attributes  jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
-- Category page sorted by name; sku_id breaks ties so pages are stable.
CREATE INDEX IF NOT EXISTS products_category_name_idx ON products (category_id, name, sku_id);

-- One current price per SKU (price history is out of scope for the demo).
CREATE TABLE IF NOT EXISTS prices (
    sku_id      bigint PRIMARY KEY REFERENCES products (sku_id) ON DELETE CASCADE,
    currency    char(3) NOT NULL DEFAULT 'USD',
    amount      numeric(12,2) NOT NULL CHECK (amount >= 0),
    list_amount numeric(12,2) CHECK (list_amount >= 0),   -- "was" price; NULL = not on sale
    valid_from  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS warehouses (
    warehouse_id integer PRIMARY KEY,
    code         text NOT NULL UNIQUE,
    region       text NOT NULL
);

-- Stock per (SKU, warehouse).
--
-- DELIBERATELY NO CHECK (on_hand >= 0): the flash-sale demo must be able to
-- show overselling when clients decrement stock directly on Postgres with a
-- read-then-write race (SELECT on_hand ... ; UPDATE ... SET on_hand = on_hand - 1),
-- and how the proxy's inventory locks prevent it. A negative on_hand is the
-- visible symptom, so the schema must allow it. A production schema would
-- add the CHECK constraint.
CREATE TABLE IF NOT EXISTS inventory (
    sku_id       bigint NOT NULL REFERENCES products (sku_id) ON DELETE CASCADE,
    warehouse_id integer NOT NULL REFERENCES warehouses (warehouse_id),
    on_hand      integer NOT NULL,              -- may go negative: see above
    reserved     integer NOT NULL DEFAULT 0,    -- held by unpaid orders
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (sku_id, warehouse_id)
);

CREATE TABLE IF NOT EXISTS customers (
    customer_id bigserial PRIMARY KEY,
    email       text NOT NULL UNIQUE,
    full_name   text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS orders (
    order_id    bigserial PRIMARY KEY,
    customer_id bigint NOT NULL REFERENCES customers (customer_id),
    status      text NOT NULL DEFAULT 'pending'
                CHECK (status IN ('pending', 'paid', 'shipped', 'cancelled', 'refunded')),
    total       numeric(12,2) NOT NULL DEFAULT 0 CHECK (total >= 0),
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS orders_customer_created_idx ON orders (customer_id, created_at DESC);
-- Sweeping abandoned checkouts (release their reservations): small, only pending rows.
CREATE INDEX IF NOT EXISTS orders_pending_created_idx ON orders (created_at) WHERE status = 'pending';

CREATE TABLE IF NOT EXISTS order_lines (
    order_id     bigint NOT NULL REFERENCES orders (order_id) ON DELETE CASCADE,
    line_no      smallint NOT NULL,
    sku_id       bigint NOT NULL REFERENCES products (sku_id),
    warehouse_id integer NOT NULL REFERENCES warehouses (warehouse_id),
    qty          integer NOT NULL CHECK (qty > 0),
    unit_price   numeric(12,2) NOT NULL CHECK (unit_price >= 0),
    PRIMARY KEY (order_id, line_no)
);
-- Sales per SKU, and the foreign key check when a product is deleted.
CREATE INDEX IF NOT EXISTS order_lines_sku_idx ON order_lines (sku_id);

CREATE TABLE IF NOT EXISTS payments (
    payment_id   bigserial PRIMARY KEY,
    order_id     bigint NOT NULL REFERENCES orders (order_id),
    processor    text NOT NULL CHECK (processor IN ('stripe', 'adyen', 'paypal')),
    amount       numeric(12,2) NOT NULL CHECK (amount >= 0),
    status       text NOT NULL DEFAULT 'pending'
                 CHECK (status IN ('pending', 'authorized', 'captured', 'failed', 'refunded')),
    external_ref text,                            -- the processor's id (pi_..., PSP ref, PAYID-...)
    created_at   timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT payments_processor_external_ref_key UNIQUE (processor, external_ref)
);
CREATE INDEX IF NOT EXISTS payments_order_idx ON payments (order_id);
CREATE INDEX IF NOT EXISTS payments_processor_created_idx ON payments (processor, created_at);
