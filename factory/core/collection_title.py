"""The title of a base model's Hub Collection, "<model> low-bit (factory)": what the card links to and
what the report's Collections are kept under (factory.fleet.hub_collections)."""

from __future__ import annotations

from factory.core.errors import UserError

# The Hub does not document a title limit client-side; titles are kept to this so that they fit on its page.
TITLE_MAX = 60
TITLE_SUFFIX = " low-bit (factory)"


def title_for(model_id: str) -> str:
    return model_id.split("/")[-1] + TITLE_SUFFIX


def check_title(title: str) -> None:
    if len(title) > TITLE_MAX:
        raise UserError(f"collection title {title!r} is {len(title)} characters, over the {TITLE_MAX} the factory "
                        "allows; nothing was changed")
