"""Static layout: offsets, lengths and encoding contexts. The layout is pure given a tokenizer,
so these tests use a one-token-per-word tokenizer to make every offset predictable."""

from __future__ import annotations

import pytest

from promptcache_cli.prompt import chat_template, contexts as ctxs, layout as lay
from promptcache_cli.pml import schema as pml

CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] "
    "+ '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


class WordTokenizer:
    """One token per whitespace-separated word (ids from a growing vocabulary)."""

    add_bos = False
    bos = -1

    def __init__(self) -> None:
        self.vocab: dict[str, int] = {}
        self.special_calls: list[str] = []

    def tokenize(self, text: str, *, special: bool) -> list[int]:
        if special:
            self.special_calls.append(text)
        return [self.vocab.setdefault(w, len(self.vocab)) for w in text.split()]

    def token_text(self, token: int) -> str:
        return ""


def build(xml: str, template: str | None = None, tok=None):
    tok = tok or WordTokenizer()
    return lay.build(pml.parse_schema(xml), tok, template), tok


TRAVEL = """
<schema name="travel">
  <module name="trip-plan">
    I'm planning a trip lasting <parameter name="duration" length="5"/>.
    <union scaffold="domestic">
      <module name="domestic">Stay in the city of <parameter name="city" length="10"/>.</module>
      <module name="overseas">
        <union>
          <module name="maldives">Beaches one two three four five six</module>
          <module name="tokyo">Temples one</module>
        </union>
      </module>
    </union>
  </module>
  <module name="tail">end here</module>
</schema>"""


def test_travel_example_offsets():
    lo, _ = build(TRAVEL)
    m = lo.modules
    # "I'm planning a trip lasting" = 5 words, then 5 parameter slots, then "."
    assert m[("trip-plan",)].offset == 0
    duration = next(s for s in lo.slots if s.name == "duration")
    assert (duration.offset, duration.length) == (5, 5)
    union_start = 11
    for member in (("trip-plan", "domestic"), ("trip-plan", "overseas"),
                   ("trip-plan", "overseas", "maldives"), ("trip-plan", "overseas", "tokyo")):
        assert m[member].offset == union_start, member
    # domestic: "Stay in the city of" (5) + 10 slots + "." = 16; maldives: 7 words
    assert m[("trip-plan", "domestic")].length == 16
    assert m[("trip-plan", "overseas")].length == 7
    # the union takes as many positions as its longest member
    assert m[("trip-plan",)].length == 11 + 16
    assert m[("tail",)].offset == 27 and lo.end == 29


def test_union_members_overlap_nothing_else_does():
    lo, _ = build(TRAVEL)
    spans = [(s.offset, s.end, s.owner) for s in lo.segments]
    spans += [(s.offset, s.offset + s.length, s.owner + (s.name,)) for s in lo.slots]
    rivals = {("trip-plan", "domestic"), ("trip-plan", "overseas", "maldives"), ("trip-plan", "overseas", "tokyo")}
    for i, (a0, a1, oa) in enumerate(spans):
        for b0, b1, ob in spans[i + 1:]:
            if a0 < b1 and b0 < a1:
                top_a = next((r for r in rivals if oa[: len(r)] == r), None)
                top_b = next((r for r in rivals if ob[: len(r)] == r), None)
                assert top_a and top_b and top_a != top_b, (oa, ob)


def test_defaults_are_modules_outside_unions_and_scaffolds():
    lo, _ = build(TRAVEL)
    assert lo.default_modules == {("trip-plan",), ("trip-plan", "domestic"), ("tail",)}


def test_inspect_elements_cover_every_kind_in_document_order():
    lo, _ = build(TRAVEL)
    kinds = {e.kind for e in lo.elements}
    assert {"module", "union", "parameter"} <= kinds
    offsets = [e.offset for e in lo.elements]
    assert offsets == sorted(offsets)
    param = next(e for e in lo.elements if e.kind == "parameter" and e.name == "city")
    assert param.length == 10


def test_schema_without_roles_becomes_the_user_turn_and_question_joins_it():
    lo, tok = build("<schema name='s'><module name='a'>alpha beta</module></schema>", CHATML)
    assert lo.tail_joins
    assert tok.special_calls[0] == "<|im_start|>user\n"
    assert lo.tail == "<|im_end|>\n<|im_start|>assistant\n"
    assert lo.modules[("a",)].offset == 1  # "<|im_start|>user" is one word here


def test_roles_render_through_the_template_and_question_opens_a_new_turn():
    xml = """<schema name='s'>
      <system>be brief</system>
      <assistant><module name='greeting'>hello there</module></assistant>
    </schema>"""
    lo, tok = build(xml, CHATML)
    assert not lo.tail_joins
    # glue between system and assistant contents, then the glue that opens the question's turn
    assert "<|im_end|>\n<|im_start|>assistant\n" in tok.special_calls
    assert tok.special_calls[-1] == "<|im_end|>\n<|im_start|>user\n"
    roles = [e.name for e in lo.elements if e.kind == "role"]
    assert roles == ["system", "assistant"]


def test_question_joins_the_last_open_user_turn():
    xml = "<schema name='s'><system>x</system><user><module name='d'>doc text</module></user></schema>"
    lo, _ = build(xml, CHATML)
    assert lo.tail_joins and lo.tail.startswith("<|im_end|>")


def test_template_that_drops_messages_is_refused():
    with pytest.raises(chat_template.TemplateError):
        chat_template.render("{{ messages[0]['content'] }}", ["system", "user"])


def test_roles_without_a_template_are_refused_plain_text_is_fine():
    with pytest.raises(chat_template.TemplateError):
        chat_template.render(None, ["system", "user"])
    assert chat_template.render(None, ["user"]).glue == ("", "\n")


def test_parameter_scaffold_longer_than_length_is_an_error():
    xml = ("<schema name='s'><module name='m'>a <parameter name='p' length='2' scaffold='one two three'/>"
           "</module></schema>")
    with pytest.raises(pml.PmlError, match="longer than its length"):
        build(xml)


def test_cdata_code_and_escapes_are_text_not_markup():
    xml = "<schema name='s'><module name='code'><![CDATA[if a < b && c > d: <tag>]]> x &lt; y</module></schema>"
    lo, tok = build(xml)
    assert lo.modules[("code",)].length == len("if a < b && c > d: <tag> x < y".split())


def test_independent_context_is_prefix_and_ancestors_only():
    xml = """<schema name='s'><system>sys words</system><user>
      <module name='a'>alpha one</module>
      <module name='b'>beta two <module name='c'>gamma</module></module>
    </user></schema>"""
    lo, tok = build(xml, CHATML)
    v = tok.vocab
    seg_c = lo.segments_of(("b", "c"))[0]
    ctx = ctxs.context_tokens(lo, seg_c, "independent")
    words = [w for w, i in sorted(v.items(), key=lambda kv: kv[1]) if i in ctx]
    assert "alpha" not in words  # the sibling module a is not seen
    assert {"sys", "beta", "two"} <= set(words)
    full = ctxs.context_tokens(lo, seg_c, "scaffold")
    assert v["alpha"] in full and len(full) == seg_c.offset  # everything before it


def test_scaffold_context_switches_the_union_to_the_member_itself():
    lo, tok = build(TRAVEL)
    seg = lo.segments_of(("trip-plan", "overseas", "tokyo"))[0]
    ctx = ctxs.context_tokens(lo, seg, "scaffold")
    assert tok.vocab["Stay"] not in ctx  # the scaffold member 'domestic' is replaced
    assert tok.vocab["planning"] in ctx
    assert seg.offset - len(ctx) == 5  # the 5-slot parameter has no scaffold text: no tokens
