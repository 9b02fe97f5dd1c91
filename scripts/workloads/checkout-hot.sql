-- The checkout of issue #18's table, contended: zipf over 500 SKUs × 3 warehouses, so
-- concurrent checkouts queue on the same rows (and, through pgsidecar, on the same advisory
-- locks); each transaction holds its row lock from the UPDATE to the end of its COMMIT.
-- bench-workloads.sh restocks these rows before it runs, so `on_hand > 0` keeps matching.
\set sku random_zipfian(1, 500, 1.1)
\set wh random(1, 3)
\set customer random(1, 5000)
BEGIN;
UPDATE inventory SET on_hand = on_hand - 1, updated_at = now() WHERE sku_id = :sku AND warehouse_id = :wh AND on_hand > 0;
INSERT INTO orders (customer_id, status, total) VALUES (:customer, 'paid', 9.99);
COMMIT;
