-- pgbench script: shoppers browsing the catalog during the flash sale. Each
-- transaction is one page view: 70% product pages, 30% category pages.
-- Product pages follow a Zipf distribution (low sku_ids, which include the
-- flash-sale SKUs, are the most viewed), so a result cache has hot keys.
--
-- Used by scripts/flash-sale.sh. Variables (pgbench -D NAME=VALUE, all required):
--   skus            product pages pick sku_id in 1..skus
--   cat_lo, cat_hi  category pages pick category_id in cat_lo..cat_hi
-- (demo data: skus=80000, categories with products 13..200)
\set sku random_zipfian(1, :skus, 1.1)
\set cat random(:cat_lo, :cat_hi)
\set page random(1, 10)
\if :page <= 7
-- product page
SELECT p.sku_id, p.name, p.brand, p.attributes, pr.currency, pr.amount, pr.list_amount
  FROM products p JOIN prices pr USING (sku_id)
 WHERE p.sku_id = :sku;
\else
-- category page, cheapest first
SELECT p.sku_id, p.name, pr.amount, pr.list_amount
  FROM products p JOIN prices pr USING (sku_id)
 WHERE p.category_id = :cat
 ORDER BY pr.amount, p.sku_id
 LIMIT 24;
\endif
