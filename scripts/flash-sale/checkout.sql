-- pgbench script: the NAIVE flash-sale checkout, written the way a typical app
-- writes it: read the stock, check it in application code, write back the
-- value it read minus one. Under concurrency two buyers read the same stock,
-- both "see" a unit left and both place an order: the second UPDATE overwrites
-- the first (a lost update), so the shop sells more units than it has.
-- DO NOT COPY INTO AN APPLICATION. It exists to show the oversell on direct
-- Postgres and that pgsidecar's inventory locks ([[locks]] table = "inventory",
-- key = ["sku_id", "warehouse_id"]) prevent it without changing this code.
--
-- Used by scripts/flash-sale.sh and tests/it/flash_sale.rs. Needs sql/schema.sql,
-- prices and warehouse-1 inventory rows for SKUs 1..hot_skus, and customers
-- 1..customers. Variables (pgbench -D NAME=VALUE, all required):
--   hot_skus    SKUs 1..hot_skus are on sale (stock in warehouse 1)
--   customers   each order goes to a random customer_id in 1..customers
--   think_ms    app time between the stock read and the write, in ms
--               (fraud check, payment authorization...); 0 = none. It widens
--               the race window, as real app latency does.
--
-- Every order placed here is tagged through its payment:
--   payments.external_ref = 'flash-sale:<order_id>'
-- (orders.status has a CHECK, so no special status). "Orders placed per SKU" is
--   SELECT ol.sku_id, count(*) FROM order_lines ol JOIN payments p USING (order_id)
--    WHERE p.external_ref LIKE 'flash-sale:%' GROUP BY ol.sku_id;
-- and a new run first deletes those payments and their orders (flash-sale.sh).
\set sku random(1, :hot_skus)
\set customer random(1, :customers)
\set processor random(1, 3)
-- The price comes from the product page the buyer is on (outside the checkout
-- transaction: a replica or the cache may serve it).
SELECT amount AS price FROM prices WHERE sku_id = :sku \gset
BEGIN;
SELECT on_hand FROM inventory WHERE sku_id = :sku AND warehouse_id = 1 \gset
\sleep :think_ms ms
\if :on_hand > 0
-- The bug: sets the value read, not on_hand - 1 (and no WHERE on_hand > 0).
UPDATE inventory SET on_hand = :on_hand - 1, updated_at = now() WHERE sku_id = :sku AND warehouse_id = 1;
INSERT INTO orders (customer_id, status, total) VALUES (:customer, 'paid', :price) RETURNING order_id \gset
INSERT INTO order_lines (order_id, line_no, sku_id, warehouse_id, qty, unit_price)
VALUES (:order_id, 1, :sku, 1, 1, :price);
INSERT INTO payments (order_id, processor, amount, status, external_ref)
VALUES (:order_id, (ARRAY['stripe', 'adyen', 'paypal'])[:processor], :price, 'captured', 'flash-sale:' || :order_id);
\endif
COMMIT;
