-- Category page: 24 cheapest products of a category.
\set cat random(1, 200)
SELECT p.sku_id, p.name, pr.amount FROM products p JOIN prices pr ON pr.sku_id = p.sku_id WHERE p.category_id = :cat ORDER BY pr.amount, p.sku_id LIMIT 24;
