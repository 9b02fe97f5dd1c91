-- Product page: product + price by SKU, zipf-distributed over the 80,000 SKUs.
\set sku random_zipfian(1, 80000, 1.1)
SELECT p.sku_id, p.name, p.brand, pr.amount, pr.currency FROM products p JOIN prices pr ON pr.sku_id = p.sku_id WHERE p.sku_id = :sku;
