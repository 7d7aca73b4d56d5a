"""sale.opened's optional product fields (issue 15): a one-line title and an https or same-origin image."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from schemas.events import MAX_TITLE_LEN, SaleOpened

BASE: dict[str, Any] = {"sale_id": "s1", "sku": "k1", "price": 1990, "allotment": 10, "per_user_limit": 1,
                        "starts_at": 1_700_000_000_000, "ends_at": 1_700_000_600_000}


def test_sale_opened_without_product_fields_is_unchanged() -> None:
    sale = msgspec.convert(BASE, SaleOpened)
    assert sale.title is None and sale.image_url is None
    assert b"title" not in msgspec.json.encode(sale)  # omitted, so older readers see the same payload


@pytest.mark.parametrize("title", ["Silk scarf", "真丝围巾 · 限量", "x" * MAX_TITLE_LEN])
@pytest.mark.parametrize("image", ["https://cdn.example.com/p/1.jpg?w=200", "/static/products/1.png"])
def test_titles_and_images_accepted(title: str, image: str) -> None:
    sale = msgspec.convert({**BASE, "title": title, "image_url": image}, SaleOpened)
    assert (sale.title, sale.image_url) == (title, image)


@pytest.mark.parametrize("title", ["", "two\nlines", "tab\there", "x" * (MAX_TITLE_LEN + 1)])
def test_bad_titles_refused(title: str) -> None:
    with pytest.raises(msgspec.ValidationError, match="title"):
        msgspec.convert({**BASE, "title": title}, SaleOpened)


@pytest.mark.parametrize("image", ["http://cdn.example.com/1.jpg", "javascript:alert(1)", "data:image/png;base64,AA",
                                   "//evil.example/1.jpg", "https://", 'https://a.example/x" onerror="y',
                                   "https://a.example/x y", "relative.png", "/", "https://" + "a" * 2050])
def test_bad_images_refused(image: str) -> None:
    with pytest.raises(msgspec.ValidationError, match="image_url"):
        msgspec.convert({**BASE, "image_url": image}, SaleOpened)
