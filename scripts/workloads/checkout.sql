-- Checkout of one item (uncontended: any of 80,000 SKUs in any of 4 warehouses): lock (through
-- pgsidecar: its advisory lock), decrement, record the order and its line.
\set sku random(1, 80000)
\set wh random(1, 4)
\set customer random(1, 5000)
BEGIN;
UPDATE inventory SET on_hand = on_hand - 1, updated_at = now() WHERE sku_id = :sku AND warehouse_id = :wh;
INSERT INTO orders (customer_id, status, total) VALUES (:customer, 'paid', 9.99) RETURNING order_id \gset
INSERT INTO order_lines (order_id, line_no, sku_id, warehouse_id, qty, unit_price) VALUES (:order_id, 1, :sku, :wh, 1, 9.99);
COMMIT;
