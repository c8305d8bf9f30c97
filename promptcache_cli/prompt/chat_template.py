"""Render a model's own chat template (Jinja, from the GGUF metadata) around role contents.

The template is rendered once with unique sentinels in place of every message's content. The text
between the sentinels is the template's glue (role headers, end-of-turn markers, default system
prompt, generation prompt); the contents themselves are inserted verbatim by the layout, so their
tokens and positions do not depend on the template.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import TemplateError

_SENTINEL = "\x1e{}\x1f"  # record/unit separators: never produced by templates themselves


@dataclass(frozen=True)
class Rendered:
    """``glue[0] content[0] glue[1] content[1] ... glue[n]`` is the rendered prompt."""

    glue: tuple[str, ...]

    def __post_init__(self) -> None:
        assert len(self.glue) >= 1


def render(
    template: str | None, roles: list[str], *, bos_token: str = "", eos_token: str = ""
) -> Rendered:
    """Render a conversation whose messages have the given roles and opaque contents, ending
    with the generation prompt. Returns the glue around the ``len(roles)`` contents."""
    if not template:
        return _plain(roles)
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise TemplateError(f"the model's chat template refused the conversation: {message}")

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    messages = [{"role": r, "content": _SENTINEL.format(i)} for i, r in enumerate(roles)]
    try:
        text = env.from_string(template).render(
            messages=messages,
            add_generation_prompt=True,
            bos_token=bos_token,
            eos_token=eos_token,
            raise_exception=raise_exception,
        )
    except TemplateError:
        raise
    except jinja2.TemplateError as e:
        raise TemplateError(f"cannot render the model's chat template: {e}") from None
    parts = re.split("\x1e(\\d+)\x1f", text)
    glue = tuple(parts[0::2])
    order = [int(i) for i in parts[1::2]]
    if order != list(range(len(roles))):
        raise TemplateError(
            "the model's chat template reorders, drops or repeats messages; "
            "this schema's role layout cannot be rendered with it"
        )
    return Rendered(glue=glue)


def _plain(roles: list[str]) -> Rendered:
    """No template (a base model): contents separated by blank lines, no role markers."""
    if any(r != "user" for r in roles):
        raise TemplateError("the model has no chat template (a base model?), so role tags cannot be rendered: "
                            "use a schema without <system>, <user> or <assistant>")
    return Rendered(glue=("",) + ("\n\n",) * (len(roles) - 1) + ("\n",))
