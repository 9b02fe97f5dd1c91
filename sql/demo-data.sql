-- pgsidecar demo data: a deterministic retail catalog.
--
--   categories    200   (12 departments, ids 1..12; 188 leaf categories,
--                        ids 13..200, ~425 SKUs each)
--   products    80,000   sku_id 1..80000
--   prices      80,000   one per SKU, USD; ~20% on sale (list_amount set)
--   warehouses       4   1 EWR1 us-east, 2 ORD1 us-central, 3 LAX1 us-west,
--                        4 AMS1 eu-west
--   inventory  320,000   every (sku, warehouse); ~5% out of stock
--   customers    5,000   customer1@example.com ...
--   orders      20,000   past orders, 1-3 lines each, with their payments
--
-- FLASH-SALE ("hot") SKUs: sku_id 1..10. Name starts with 'Flash Deal:',
-- attributes->>'flash_sale' = 'true', price 9.99 (list 49.99), and stock of
-- exactly 10 units in warehouse 1 (EWR1) and 0 in warehouses 2-4, nothing
-- reserved. No historical order line uses them, so a flash-sale run starts
-- from a known state: selling more than 10 of SKU n in warehouse 1 is an
-- oversell (on_hand < 0: sql/schema.sql allows it on purpose).
--
-- DESTRUCTIVE AND RE-RUNNABLE: starts by TRUNCATE-ing every demo table
-- (RESTART IDENTITY), then regenerates everything. Running it twice gives
-- the same data.
--
-- Deterministic: setseed() fixes random(), and every random() is evaluated
-- over a single generate_series scan (random() is parallel restricted, so
-- these queries never run in parallel and rows come in series order);
-- timestamps are fixed dates, not now(). Same Postgres major version, same
-- data.
--
-- Needs sql/schema.sql applied first (and sql/invalidation.sql, if the
-- cache-invalidation NOTIFYs are wanted: each statement below sends one).
-- Takes a few seconds on 2 cores; run it as the tables' owner.

BEGIN;
-- The data is regenerable: don't wait for the WAL flush at commit.
SET LOCAL synchronous_commit = off;

TRUNCATE payments, order_lines, orders, customers, inventory, prices, products, warehouses, categories
    RESTART IDENTITY CASCADE;

-- (PERFORM in DO blocks: no result rows cluttering psql's output.)
DO $$ BEGIN PERFORM setseed(0.4242); END $$;

-- Categories ---------------------------------------------------------------

INSERT INTO categories (category_id, parent_id, name, slug)
SELECT d::int, NULL, dept, lower(regexp_replace(dept, '[^A-Za-z0-9]+', '-', 'g'))
FROM unnest(ARRAY['Electronics', 'Computers', 'Home & Kitchen', 'Garden', 'Toys', 'Sports',
                  'Outdoors', 'Beauty', 'Health', 'Grocery', 'Fashion', 'Automotive'])
     WITH ORDINALITY AS u(dept, d);

-- Leaves 13..200: leaf c belongs to department 1 + (c-13) % 12 and is that
-- department's ((c-13) / 12)-th subcategory, so (department, sub) is unique.
INSERT INTO categories (category_id, parent_id, name, slug)
SELECT c, dept_id, dept.name || ' ' || sub,
       lower(regexp_replace(dept.name || '-' || sub, '[^A-Za-z0-9]+', '-', 'g'))
FROM generate_series(13, 200) AS c
CROSS JOIN LATERAL (SELECT 1 + (c - 13) % 12 AS dept_id,
                           (ARRAY['Essentials', 'Accessories', 'Premium', 'Basics', 'Bundles',
                                  'Refurbished', 'Kids', 'Pro', 'Travel', 'Eco', 'Classics',
                                  'Smart', 'Compact', 'Outlet', 'Gifts', 'New Arrivals'])
                               [1 + (c - 13) / 12] AS sub) AS x
JOIN categories AS dept ON dept.category_id = x.dept_id;

-- Products -----------------------------------------------------------------

INSERT INTO products (sku_id, name, description, category_id, brand, attributes, created_at, updated_at)
SELECT s,
       CASE WHEN s <= 10 THEN 'Flash Deal: ' ELSE '' END
           || brand || ' ' || adj || ' ' || noun || ' ' || upper(substr(md5(s::text), 1, 4)),
       'The ' || brand || ' ' || adj || ' ' || noun || ' in ' || color
           || '. ' || (ARRAY['Built to last.', 'Customer favourite.', 'Ships in 24 hours.',
                             'Two-year warranty included.', 'Limited edition.',
                             'Sustainably made.'])[1 + floor(r4 * 6)::int]
           || ' Model ' || upper(substr(md5(s::text), 1, 4)) || ', SKU ' || s || '.',
       13 + floor(r1 * 188)::int,
       brand,
       jsonb_build_object('color', color,
                          'weight_g', 50 + floor(r5 * 5000)::int,
                          'rating', round((2.5 + r6 * 2.5)::numeric, 1),
                          'reviews', floor(r6 * r6 * 4000)::int)
           || CASE WHEN s <= 10 THEN '{"flash_sale": true}'::jsonb ELSE '{}'::jsonb END,
       created,
       created + floor(r7 * 90) * interval '1 day'
FROM (
    SELECT s, r1, r4, r5, r6, r7,
           (ARRAY['Acme', 'Globex', 'Initech', 'Umbrella', 'Stark', 'Wayne', 'Hooli', 'Vandelay',
                  'Soylent', 'Cyberdyne', 'Tyrell', 'Wonka', 'Oscorp', 'Aperture', 'Gringotts',
                  'Monarch', 'Nakatomi', 'Pied Piper', 'Dunder', 'Prestige', 'Bluth', 'Krusty',
                  'Duff', 'Virtucon', 'Massive', 'Gekko', 'Sirius', 'Zorg', 'Oceanic', 'Abstergo',
                  'Blue Sun', 'Weyland', 'Ollivander', 'Sterling', 'Lacuna', 'Rekall', 'Yoyodyne',
                  'Buy n Large', 'Octan', 'Ajax'])[1 + floor(r2 * 40)::int] AS brand,
           (ARRAY['Ultra', 'Classic', 'Compact', 'Deluxe', 'Eco', 'Pro', 'Smart', 'Mini',
                  'Max', 'Lite', 'Rugged', 'Silent', 'Turbo', 'Premium', 'Essential',
                  'Portable'])[1 + floor(r3 * 16)::int] AS adj,
           (ARRAY['Blender', 'Headphones', 'Backpack', 'Lamp', 'Kettle', 'Drone', 'Jacket',
                  'Sneakers', 'Tent', 'Monitor', 'Keyboard', 'Speaker', 'Watch', 'Camera',
                  'Chair', 'Mug', 'Toaster', 'Router', 'Charger', 'Bottle', 'Helmet', 'Grill',
                  'Vacuum', 'Scooter'])[1 + floor(r8 * 24)::int] AS noun,
           (ARRAY['black', 'white', 'red', 'blue', 'green', 'grey', 'silver', 'navy',
                  'orange', 'pink'])[1 + floor(r9 * 10)::int] AS color,
           timestamptz '2023-01-01 00:00:00+00' + floor(r7 * 540) * interval '1 day' AS created
    FROM (SELECT s, random() AS r1, random() AS r2, random() AS r3, random() AS r4,
                 random() AS r5, random() AS r6, random() AS r7, random() AS r8, random() AS r9
          FROM generate_series(1, 80000) AS s) AS g
) AS p;

-- Prices: mostly cheap, a long tail up to ~1,500. ~20% on sale.
INSERT INTO prices (sku_id, currency, amount, list_amount, valid_from, updated_at)
SELECT s, 'USD',
       CASE WHEN s <= 10 THEN 9.99 ELSE round((4.99 + r1 * r1 * 1495)::numeric, 2) END,
       CASE WHEN s <= 10 THEN 49.99
            WHEN r2 < 0.2 THEN round(((4.99 + r1 * r1 * 1495) * (1.1 + r3 * 0.4))::numeric, 2)
       END,
       timestamptz '2024-06-01 00:00:00+00' + floor(r3 * 120) * interval '1 day',
       timestamptz '2024-06-01 00:00:00+00' + floor(r3 * 120) * interval '1 day'
FROM (SELECT s, random() AS r1, random() AS r2, random() AS r3
      FROM generate_series(1, 80000) AS s) AS g;

-- Warehouses and stock -----------------------------------------------------

INSERT INTO warehouses (warehouse_id, code, region) VALUES
    (1, 'EWR1', 'us-east'),
    (2, 'ORD1', 'us-central'),
    (3, 'LAX1', 'us-west'),
    (4, 'AMS1', 'eu-west');

-- Row i is (sku (i-1)/4 + 1, warehouse (i-1)%4 + 1): one scan, fixed order.
INSERT INTO inventory (sku_id, warehouse_id, on_hand, reserved, updated_at)
SELECT sku, wh,
       CASE WHEN sku <= 10 THEN CASE WHEN wh = 1 THEN 10 ELSE 0 END
            WHEN r1 < 0.05 THEN 0
            ELSE 1 + floor(r2 * 250)::int
       END,
       CASE WHEN sku <= 10 OR r1 < 0.05 THEN 0 ELSE floor(r3 * r3 * 4)::int END,
       timestamptz '2024-09-01 00:00:00+00' + floor(r3 * 30) * interval '1 day'
FROM (SELECT (i - 1) / 4 + 1 AS sku, (i - 1) % 4 + 1 AS wh,
             random() AS r1, random() AS r2, random() AS r3
      FROM generate_series(1, 320000) AS i) AS g;

-- Customers ----------------------------------------------------------------

INSERT INTO customers (customer_id, email, full_name, created_at)
SELECT n, 'customer' || n || '@example.com',
       (ARRAY['Ada', 'Grace', 'Alan', 'Edsger', 'Barbara', 'Donald', 'Margaret', 'Ken',
              'Frances', 'John', 'Radia', 'Linus', 'Sophie', 'Dennis', 'Katherine',
              'Tim'])[1 + floor(r1 * 16)::int]
           || ' ' ||
       (ARRAY['Lovelace', 'Hopper', 'Turing', 'Dijkstra', 'Liskov', 'Knuth', 'Hamilton',
              'Thompson', 'Allen', 'Backus', 'Perlman', 'Torvalds', 'Wilson', 'Ritchie',
              'Johnson', 'Berners-Lee'])[1 + floor(r2 * 16)::int],
       timestamptz '2022-01-01 00:00:00+00' + floor(r3 * 900) * interval '1 day'
FROM (SELECT n, random() AS r1, random() AS r2, random() AS r3
      FROM generate_series(1, 5000) AS n) AS g;

DO $$ BEGIN PERFORM setval(pg_get_serial_sequence('customers', 'customer_id'), 5000); END $$;

-- Order history ------------------------------------------------------------

INSERT INTO orders (order_id, customer_id, status, total, created_at)
SELECT o, 1 + floor(r1 * 5000)::int,
       CASE WHEN r2 < 0.70 THEN 'shipped'
            WHEN r2 < 0.85 THEN 'paid'
            WHEN r2 < 0.93 THEN 'cancelled'
            WHEN r2 < 0.97 THEN 'refunded'
            ELSE 'pending'
       END,
       0,  -- set from the lines below
       timestamptz '2024-01-01 00:00:00+00' + floor(r3 * 270 * 24 * 60) * interval '1 minute'
FROM (SELECT o, random() AS r1, random() AS r2, random() AS r3
      FROM generate_series(1, 20000) AS o) AS g;

DO $$ BEGIN PERFORM setval(pg_get_serial_sequence('orders', 'order_id'), 20000); END $$;

-- Row i is line (i-1)%3 + 1 of order (i-1)/3 + 1; order o keeps 1 + o%3 of
-- its 3 candidate lines. Hot SKUs 1..10 are never used.
INSERT INTO order_lines (order_id, line_no, sku_id, warehouse_id, qty, unit_price)
SELECT ord, line, sku, wh, qty, (SELECT amount FROM prices WHERE prices.sku_id = g.sku)
FROM (SELECT (i - 1) / 3 + 1 AS ord, (i - 1) % 3 + 1 AS line,
             11 + floor(random() * 79990)::bigint AS sku,
             1 + floor(random() * 4)::int AS wh,
             1 + floor(random() * random() * 4)::int AS qty
      FROM generate_series(1, 60000) AS i) AS g
WHERE line <= 1 + ord % 3;

UPDATE orders AS o SET total = l.total
FROM (SELECT order_id, sum(qty * unit_price) AS total FROM order_lines GROUP BY order_id) AS l
WHERE o.order_id = l.order_id;

-- One payment per order that got as far as paying. external_ref is derived
-- from the order id, so it is unique per processor.
INSERT INTO payments (order_id, processor, amount, status, external_ref, created_at)
SELECT o.order_id, g.processor, o.total,
       CASE o.status WHEN 'cancelled' THEN 'failed'
                     WHEN 'refunded' THEN 'refunded'
                     WHEN 'pending' THEN 'authorized'
                     ELSE 'captured'
       END,
       CASE g.processor
           WHEN 'stripe' THEN 'pi_' || substr(md5('stripe' || o.order_id), 1, 24)
           WHEN 'adyen' THEN upper(substr(md5('adyen' || o.order_id), 1, 16))
           ELSE 'PAYID-' || upper(substr(md5('paypal' || o.order_id), 1, 20))
       END,
       o.created_at + interval '2 minutes'
FROM (SELECT o, CASE WHEN r < 0.55 THEN 'stripe' WHEN r < 0.85 THEN 'adyen' ELSE 'paypal' END AS processor
      FROM (SELECT o, random() AS r FROM generate_series(1, 20000) AS o) AS x) AS g
JOIN orders AS o ON o.order_id = g.o
ORDER BY o.order_id;

COMMIT;

-- Fresh statistics for the planner, and a visibility map so that index-only
-- scans work and the first reads don't have to set hint bits.
VACUUM (ANALYZE) categories, products, prices, warehouses, inventory, customers, orders, order_lines, payments;
