"""PML as the reference implementation (yale-sys/prompt-cache) writes it: role tags inside modules,
cache="false" modules, prompt files without question text or with a <user> question, and the CDATA
hint on syntax errors in a module's text. Every schema here is our own; the unit tests use a
one-token-per-word tokenizer, the rest the real default model (and Gemma 3 270M, which has no chat
template)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import jinja2
import numpy as np
import pytest

import promptcache_cli as pc
from promptcache_cli import errors
from promptcache_cli.api import append_question
from promptcache_cli.pml import schema as pml
from promptcache_cli.pml.selection import default_selection, select_cli
from promptcache_cli.prompt import layout as lay
from promptcache_cli.prompt.plan import Uncached, plan_prompt
from promptcache_cli.store import cache_file

from .conftest import license_excerpt, write_schema
from .support.pc_process import ok, one_line_error, pc as run_pc

GEMMA = Path(sys.prefix) / "models" / "gemma-3-270m-q4_k_m.gguf"  # where `make test` puts it

# ChatML with a default system turn when the first message is not a system one (SmolLM2's shape)
CHATML = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nBe helpful.<|im_end|>\\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


class Words:
    """One token per word, per marker such as ``<|im_start|>`` and per line break in text (not in
    template glue); ``<|im_end|>`` ends a turn."""

    add_bos = False

    def __init__(self, bos: str | None = None) -> None:
        self.vocab: dict[str, int] = {}
        self.bos = self.vocab.setdefault(bos, 0) if bos else -1

    def tokenize(self, text: str, *, special: bool) -> list[int]:
        return [self.vocab.setdefault(w, len(self.vocab)) for w in re.findall(r"<\|\w+\|>|<s>|[^\s<]+" + ("" if special else r"|\n"), text)]

    def token_text(self, token: int) -> str:
        return next(w for w, i in self.vocab.items() if i == token)

    def is_eog(self, token: int) -> bool:
        return self.token_text(token) == "<|im_end|>"

    def words(self, tokens) -> list[str]:
        return [self.token_text(t) for t in tokens]


def build(xml: str, template: str | None = CHATML, tok: Words | None = None):
    tok = tok or Words()
    return lay.build(pml.parse_schema(xml), tok, template), tok


def owned(lo: lay.Layout, tok: Words, owner: tuple[str, ...]) -> list[str]:
    return tok.words(t for s in lo.segments_of(owner) for t in s.tokens)


def schema_error(xml: str) -> pml.PmlError:
    with pytest.raises(pml.PmlError) as info:
        pml.parse_schema(xml)
    return info.value


# -- role tags inside modules: parsing ---------------------------------------------------------

TOUR = """<schema name="tour">
  <module name="preface">
    Some text with a parameter: <parameter name="who" length="4" scaffold="nobody"/>
    <module name="nested">Nested</module>
    <system>
      <union scaffold="polite">
        <module name="polite">Be polite.</module>
        <module name="terse" cache="false">Be terse.</module>
      </union>
      Talk about <parameter name="topic" length="3"/>.
    </system>
  </module>
  <module name="task"><user>Do the task.</user></module>
</schema>"""


def test_role_tag_in_a_module_belongs_to_that_module():
    schema = pml.parse_schema(TOUR)
    preface = schema.children[0]
    role = next(c for c in preface.children if isinstance(c, pml.Role))
    assert role.role == "system" and role.line == 5
    assert [type(c).__name__ for c in role.children] == ["Union", "Text", "Parameter", "Text"]
    # what the role tag holds belongs to the module around it: its modules, its parameters
    sel = select_cli(schema, modules=["preface/terse"], params=["topic=cats", "preface/who=Ann"])
    assert ("preface", "terse") in sel.modules
    assert sel.params == ((("preface",), "topic", "cats"), (("preface",), "who", "Ann"))


@pytest.mark.parametrize("xml", [
    '<schema name="s"><user><system>x</system></user></schema>',
    '<schema name="s"><user><module name="m"><system>x</system></module></user></schema>',
    '<schema name="s"><module name="m"><user><module name="n"><system>x</system></module></user></module></schema>',
])
def test_role_tags_cannot_stand_inside_role_tags(xml):
    assert "role tags cannot be nested: <system> is inside <user>" in schema_error(xml).message


# -- cache="false": parsing --------------------------------------------------------------------


def test_cache_attribute_and_its_inheritance():
    schema = pml.parse_schema("""<schema name="s">
      <module name="a" cache="false">A <module name="b">B</module>
        <union><module name="c">C</module></union></module>
      <module name="d" cache="true">D</module><module name="e">E</module>
    </schema>""")
    a, d, e = (c for c in schema.children if isinstance(c, pml.Module))
    b = next(c for c in a.children if isinstance(c, pml.Module))
    c = next(c for c in a.children if isinstance(c, pml.Union)).members[0]
    assert (a.cache, b.cache, c.cache, d.cache, e.cache) == (False, False, False, True, True)


def test_cache_attribute_errors(tmp_path):
    e = schema_error('<schema name="s">\n<module name="a" cache="no">x</module></schema>')
    assert e.message == "cache must be \"true\" or \"false\", got 'no'" and e.line == 2
    e = schema_error('<schema name="s"><module name="a" cache="false">\n'
                     '<module name="b" cache="true">x</module></module></schema>')
    assert e.line == 2 and "inside <module name=\"a\"> (line 1), which is not cached" in e.message
    (tmp_path / "t.txt").write_text("from a file")
    path = write_schema(tmp_path, '<schema name="s"><module name="f" src="t.txt" cache="false"/></schema>')
    assert pml.load_schema(path).children[0].cache is False


# -- prompts: <user> around the question, no question at all ---------------------------------


def test_user_tag_in_a_prompt_is_the_question_and_an_empty_one_an_import():
    p = pml.parse_prompt('<prompt schema="s">\n <a/><b x="1"/>\n <user>\n   Who are you?\n </user>\n</prompt>')
    assert [i.name for i in p.imports] == ["a", "b"] and p.question == "Who are you?"
    p = pml.parse_prompt('<prompt schema="s"><a/><user/></prompt>')  # a module named "user"
    assert [i.name for i in p.imports] == ["a", "user"] and p.question == ""
    assert pml.parse_prompt('<prompt schema="s"><E/><N/></prompt>').question == ""
    p = pml.parse_prompt('<prompt schema="s">\n  Just a question?\n</prompt>')  # text only: no module
    assert p.imports == () and p.question == "Just a question?"


@pytest.mark.parametrize("xml, message", [
    ('<prompt schema="s"><a/><user>q</user><assistant>a</assistant><user>q2</user></prompt>',
     "<assistant> turns in a prompt are not supported"),
    ('<prompt schema="s"><system>be brief</system><a/></prompt>', "<system> turns in a prompt are not supported"),
    ('<prompt schema="s"><user>q</user><user>again</user></prompt>', "<user> turns in a prompt are not supported"),
    ('<prompt schema="s"><user>q</user><a/></prompt>', "must come after the last import"),
    ('<prompt schema="s"><a/><user>q</user> more</prompt>', "text beside <user>"),
    ('<prompt schema="s"><a/><user>is <b/> less?</user></prompt>', "markup inside the question"),
])
def test_prompt_turn_errors(xml, message):
    with pytest.raises(pml.PmlError) as info:
        pml.parse_prompt(xml)
    assert message in info.value.message


def test_a_question_beside_a_prompt_file_is_appended():
    assert append_question("", "What now?") == "What now?"
    assert append_question("Be brief.", " What now? ") == "Be brief.\n\nWhat now?"
    assert append_question("Be brief.", None) == append_question("Be brief.", "  ") == "Be brief."


# -- the CDATA hint ----------------------------------------------------------------------------


@pytest.mark.parametrize("code, line", [("if a < b:\n    pass", 5), ("x = a && b", 5), ("print('<tag>')", 6)])
def test_syntax_error_in_module_text_suggests_cdata(code, line):
    e = schema_error(f'<schema name="s">\n<user>\n<module name="m.py">\nimport os\n{code}\n</module></user></schema>')
    assert e.line == line
    assert 'in the text of <module name="m.py"> (opened on line 3)' in e.message
    assert "wrap that text in <![CDATA[ ... ]]>" in e.message


def test_syntax_error_outside_a_module_has_no_hint():
    e = schema_error('<schema name="s">\n<user>x < y</user></schema>')
    assert e.message == "XML syntax error: not well-formed (invalid token)"
    with pytest.raises(pml.PmlError) as info:
        pml.parse_prompt('<prompt schema="s"><a/>is a < b?</prompt>')
    assert "CDATA" not in info.value.message


# -- role tags inside modules: layout ----------------------------------------------------------

NESTED = """<schema name="s">
  <module name="rules"><system>be brief</system></module>
  <module name="doc">intro words <user>doc text here</user></module>
</schema>"""


def test_role_markers_are_the_modules_tokens():
    lo, tok = build(NESTED)
    # each turn's markers (open, then close through the end-of-turn token) are its module's
    assert owned(lo, tok, ("rules",)) == ["<|im_start|>", "system", "be", "brief", "<|im_end|>"]
    assert owned(lo, tok, ("doc",)) == ["intro", "words", "<|im_start|>", "user", "doc", "text", "here",
                                        "<|im_end|>"]
    assert lo.modules[("rules",)].length == 5 and lo.modules[("doc",)].offset == 5
    # the question gets a user turn of its own, opened by the schema after everything else
    assert not lo.tail_joins and lo.tail == "<|im_end|>\n<|im_start|>assistant\n"
    assert owned(lo, tok, ()) == ["<|im_start|>", "user"] and lo.segments_of(())[0].offset == lo.end - 2
    roles = [(e.name, e.path, e.offset, e.length) for e in lo.elements if e.kind == "role"]
    assert roles == [("system", ("rules",), 2, 2), ("user", ("doc",), 5 + 4, 3)]
    # left out, a module takes its turn with it
    sel = select_cli(pml.parse_schema(NESTED), modules=["doc"], params=[])
    assert tok.words(plan_prompt(lo, sel, tok).tokens()) == owned(lo, tok, ("doc",)) + ["<|im_start|>", "user"]


def test_a_default_system_turn_stays_the_schemas():
    lo, tok = build('<schema name="s"><module name="doc"><user>doc text</user></module></schema>')
    root = owned(lo, tok, ())
    assert root[:5] == ["<|im_start|>", "system", "Be", "helpful.", "<|im_end|>"]  # then the question's turn
    assert owned(lo, tok, ("doc",)) == ["<|im_start|>", "user", "doc", "text", "<|im_end|>"]


def test_a_bos_token_the_template_writes_stays_the_schemas():
    template = "{{ bos_token }}" + CHATML
    lo, tok = build('<schema name="s"><module name="m"><system>hi</system></module></schema>', template,
                    Words(bos="<s>"))
    assert owned(lo, tok, ()) == ["<s>", "<|im_start|>", "user"]
    assert owned(lo, tok, ("m",)) == ["<|im_start|>", "system", "hi", "<|im_end|>"]


def test_turns_in_union_members_each_carry_their_markers():
    lo, tok = build("""<schema name="s"><module name="who"><union scaffold="a">
      <module name="a"><system>first</system></module>
      <module name="b"><user>second one</user></module></union></module></schema>""")
    a, b = lo.modules[("who", "a")], lo.modules[("who", "b")]
    assert a.offset == b.offset and lo.modules[("who",)].length == max(a.length, b.length) == 5
    assert owned(lo, tok, ("who", "a")) == ["<|im_start|>", "system", "first", "<|im_end|>"]
    assert owned(lo, tok, ("who", "b")) == ["<|im_start|>", "user", "second", "one", "<|im_end|>"]


def test_blank_text_beside_a_turn_goes_other_text_stays():
    lo, tok = build("""<schema name="s">
      <module name="m">Hello <parameter name="p" length="2"/>
        <module name="n">world</module>
        <user>hi</user>
      </module>
      <module name="k"><system>sys</system></module>
    </schema>""")
    assert owned(lo, tok, ("m",)) == ["Hello", "\n", "<|im_start|>", "user", "hi", "<|im_end|>"]
    assert lo.modules[("m", "n")].offset == lo.modules[("m",)].offset + 1 + 2 + 1  # after the slot and the line break
    m = lo.modules[("m",)]
    assert lo.modules[("k",)].offset == m.offset + m.length  # no line break between the two modules
    assert [s.offset for s in lo.segments_of(())] == [0, lo.end - 2]  # default system turn, question turn


def test_text_between_two_turns_of_one_module_stays_outside_them():
    lo, tok = build('<schema name="s"><module name="m"><system>a</system> middle <user>b</user></module></schema>')
    assert owned(lo, tok, ("m",)) == ["<|im_start|>", "system", "a", "<|im_end|>", "middle",
                                      "<|im_start|>", "user", "b", "<|im_end|>"]


def test_schemas_with_top_level_roles_lay_out_as_before():
    xml = '<schema name="s"><system>be brief</system><user><module name="d">doc</module></user></schema>'
    lo, tok = build(xml)
    assert lo.tail_joins and owned(lo, tok, ("d",)) == ["doc"]
    assert owned(lo, tok, ()) == ["<|im_start|>", "system", "be", "brief", "<|im_end|>", "<|im_start|>", "user"]


def test_nested_roles_need_a_chat_template_unless_all_are_user_turns():
    with pytest.raises(errors.TemplateError, match="no chat template"):
        build(NESTED, template=None)
    lo, tok = build('<schema name="s"><module name="a"><user>one</user></module>'
                    '<module name="b"><user>two</user></module></schema>', template=None)
    assert owned(lo, tok, ("a",)) == ["one"] and owned(lo, tok, ("b",)) == ["two"]


# -- cache="false": layout and plan ------------------------------------------------------------

LIVE = """<schema name="s"><system>sys</system><user>
  <module name="a">alpha</module>
  <module name="live" cache="false">beta <module name="inner">gamma</module></module>
  <module name="c">delta</module></user></schema>"""


def test_uncached_modules_are_laid_out_but_never_owners_of_stored_states():
    lo, tok = build(LIVE)
    assert lo.uncached == {("live",), ("live", "inner")}
    assert ("live",) not in lo.owners() and ("c",) in lo.owners()
    assert not lo.modules[("live",)].cached and lo.modules[("c",)].cached
    assert [e.cached for e in lo.elements if e.kind == "module"] == [True, False, False, True]
    plan = plan_prompt(lo, default_selection(pml.parse_schema(LIVE)), tok)
    live = [p for p in plan if isinstance(p, Uncached)]
    assert [(p.owner, p.offset) for p in live] == [(("live",), lo.modules[("live",)].offset),
                                                   (("live", "inner"), lo.modules[("live", "inner")].offset)]
    assert plan.owners == [(), ("a",), ("c",)]
    tokens, starts = plan.storable()  # prefix mode stores the prompt up to the first one
    assert tokens == plan.tokens()[: lo.modules[("live",)].offset] and max(starts) < len(tokens)


# -- the real default model --------------------------------------------------------------------


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    with pc.open_session(cache_dir=tmp_path_factory.mktemp("ref-cache"), mode="modular") as s:
        yield s


def _render(session, messages) -> str:
    """The default model's own chat template, rendered with jinja2 (the reference's markers)."""
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    return env.from_string(session.model.chat_template()).render(messages=messages, add_generation_prompt=True)


def test_nested_roles_render_the_default_models_template(session, tmp_path):
    path = write_schema(tmp_path, """
        <schema name="nested">
          <module name="rules"><system>You answer in one sentence.</system></module>
          <module name="doc"><user>The museum opens at nine.</user></module>
        </schema>""")
    q = "When does it open?"
    view = session.prompt(pc.Request(path, q))
    turns = [{"role": "system", "content": "You answer in one sentence."},
             {"role": "user", "content": "The museum opens at nine."}, {"role": "user", "content": q}]
    assert session.text_of(view.tokens) == _render(session, turns)
    # left out, the module takes its turn with it (and nothing takes its place)
    view = session.prompt(pc.Request(path, q, modules=["doc"]))
    assert session.text_of(view.tokens) == _render(session, turns[1:]).split("<|im_end|>\n", 1)[1]


def test_nested_roles_answer_as_no_cache_does(session, tmp_path):
    doc = license_excerpt("BSD.txt", 1400)
    path = write_schema(tmp_path, f"""
        <schema name="conv">
          <module name="conv">
            <system>You answer questions about the license the user gives.</system>
            <user>{doc}</user>
          </module>
        </schema>""")
    session.compile(path)
    # the module's file holds its turns' markers with its text, at its positions
    f = cache_file.read(session.module_files(path)["conv"])
    stored = [t for seg in f.segments for t in seg.tokens]
    f.close()
    assert stored[:3] == session.tokenize("<|im_start|>system\n", special=True)
    assert stored[-2:] == session.tokenize("<|im_end|>\n", special=True)
    q = "May I redistribute the software?"
    cached = session.ask(pc.Request(path, q, max_tokens=16, keep_logits=True))
    base = session.ask(pc.Request(path, q, max_tokens=16, keep_logits=True, no_cache=True))
    assert cached.cached_tokens > 200 and not cached.compiled
    np.testing.assert_array_equal(cached.first_logits, base.first_logits)  # every state exact here
    assert cached.text == base.text and cached.text.strip()


def test_uncached_module_is_recomputed_for_each_request_and_answers_as_no_cache(session, tmp_path):
    note = license_excerpt("Artistic.txt", 700)
    path = write_schema(tmp_path, f"""
        <schema name="live">
          <system>You answer briefly.</system>
          <user><module name="note" cache="false">{note}</module></user>
        </schema>""")
    files = set(session.cache_dir.rglob("*.pcm"))
    report = session.compile(path)
    assert [m.name for m in report.modules] == ["(schema)"]
    assert list(session.module_files(path)) == ["(schema)"]
    q = "What does the license allow?"
    view = session.prompt(pc.Request(path, q))
    assert [p.kind for p in view.parts] == ["cached", "uncached", "question"]
    n_note, n_q = len(view.parts[1].tokens), len(view.parts[2].tokens)
    for _ in range(2):  # computed again each time, never stored
        cached = session.ask(pc.Request(path, q, max_tokens=16, keep_logits=True))
        assert (cached.cached_tokens, cached.computed_tokens) == (len(view.parts[0].tokens), n_note + n_q)
        assert not cached.compiled
    assert set(session.cache_dir.rglob("*.pcm")) - files == {session.module_files(path)["(schema)"]}
    base = session.ask(pc.Request(path, q, max_tokens=16, keep_logits=True, no_cache=True))
    np.testing.assert_array_equal(cached.first_logits, base.first_logits)  # cached states before it are exact
    assert cached.text == base.text and cached.text.strip()


LIVE_SCHEMA = """
    <schema name="shop">
      <system>You answer questions about the shop.</system>
      <user>
        <module name="hours">The shop opens at nine and closes at six.</module>
        <module name="today" cache="false">Today the shop is closed for inventory.</module>
        <module name="staff">Ann and Bo work at the shop.</module>
      </user>
    </schema>"""


def test_cli_lists_and_inspects_uncached_modules(tmp_path):
    path = write_schema(tmp_path, LIVE_SCHEMA)
    cache = tmp_path / "cache"
    compiled = ok(run_pc("compile", path, "--json", cache_dir=cache)).json()
    assert [m["module"] for m in compiled["modules"]] == ["(schema)", "hours", "staff"]
    modules = ok(run_pc("ls", "--json", cache_dir=cache)).json()["schemas"][0]["variants"][0]["modules"]
    today = next(m for m in modules if m["name"] == "today")
    assert today == {"name": "today", "key": None, "tokens": today["tokens"], "bytes": 0, "ratio": None,
                     "last_used": None, "present": False, "cached": False} and today["tokens"] > 5
    assert [m["name"] for m in modules] == ["(schema)", "hours", "today", "staff"]  # document order
    assert "uncached" in ok(run_pc("ls", cache_dir=cache)).out
    rows = ok(run_pc("inspect", path, "--json")).json()["elements"]
    assert {r["name"]: r["cached"] for r in rows if r["kind"] == "module"} == {
        "hours": True, "today": False, "staff": True}
    assert "today (uncached)" in ok(run_pc("inspect", path)).out
    answer = ok(run_pc("ask", "Is the shop open today?", "-s", path, "-n", "8", "--json", cache_dir=cache)).json()
    assert answer["computed_tokens"] > today["tokens"] and answer["warnings"] == []
    again = ok(run_pc("ask", "Is the shop open today?", "-s", path, "-n", "8", "--json", cache_dir=cache)).json()
    assert again["computed_tokens"] == answer["computed_tokens"] and again["answer"] == answer["answer"]
    assert len(list(cache.rglob("*.pcm"))) == 3


def test_prefix_mode_stores_the_prompt_up_to_the_first_uncached_module(tmp_path):
    path = write_schema(tmp_path, LIVE_SCHEMA)
    with pc.open_session(cache_dir=tmp_path / "cache", mode="prefix") as sess:
        report = sess.compile(path)
        view = sess.prompt(pc.Request(path, "Who works there?"))
        first = next(p for p in view.parts if p.kind == "uncached")
        assert [m.name for m in report.modules] == [f"prefix@{first.offset}"]
        listing = pc.list_cache(sess.cache_dir).schemas[0].variants[0]
        assert listing.tokens == first.offset and [m.name for m in listing.modules if not m.cached] == ["today"]
        cached = sess.ask(pc.Request(path, "Who works there?", max_tokens=12))
        base = sess.ask(pc.Request(path, "Who works there?", max_tokens=12, no_cache=True))
        assert cached.cached_tokens == first.offset and cached.tokens == base.tokens


PERSONA = """
    <schema name="persona">
      <system>You play the character the user describes, in the first person.</system>
      <user>
        Create a character who is
        <union scaffold="any">
          <module name="any">someone</module>
          <module name="calm">a calm gardener</module>
          <module name="loud">a loud sailor</module>
        </union>.
        Then say hello as that character.
      </user>
    </schema>"""


def test_prompt_files_without_question_and_with_one_beside_them(tmp_path):
    schema = write_schema(tmp_path, PERSONA)
    cache = tmp_path / "cache"
    bare = tmp_path / "bare.xml"
    bare.write_text('<prompt schema="persona">\n  <calm/>\n</prompt>\n')
    as_is = ok(run_pc("ask", "--prompt", bare, "-s", schema, "-n", "12", "--json", cache_dir=cache)).json()
    assert as_is["answer"].strip() and as_is["modules"] == ["calm"]
    # a question beside the file is its question; a <user> tag around it in the file is the same
    inline = tmp_path / "inline.xml"
    inline.write_text('<prompt schema="persona"><calm/>\n  <user>What is your name?</user>\n</prompt>\n')
    beside = ok(run_pc("ask", "What is your name?", "--prompt", bare, "-s", schema, "-n", "12", "--json",
                       cache_dir=cache)).json()
    inside = ok(run_pc("ask", "--prompt", inline, "-s", schema, "-n", "12", "--json", cache_dir=cache)).json()
    stdin = ok(run_pc("ask", "-", "--prompt", bare, "-s", schema, "-n", "12", "--json", cache_dir=cache,
                      stdin="What is your name?")).json()
    assert beside["answer"] == inside["answer"] == stdin["answer"] != as_is["answer"]
    assert beside["computed_tokens"] > as_is["computed_tokens"]
    # appended after the file's own question
    both = pc.request_from_prompt(inline, schema=pc.load_schema(schema), question="And your age?")
    assert both.question == "What is your name?\n\nAnd your age?"
    one_line_error(run_pc("ask", "", "-s", schema), errors.EXIT_INPUT)  # without a prompt file: still a question


def test_cli_cdata_hint_names_file_line_and_module(tmp_path):
    path = write_schema(tmp_path, '<schema name="code">\n<module name="sort.py">\n'
                                  'def smaller(a, b):\n    return a if a < b else b\n</module>\n</schema>')
    err = one_line_error(run_pc("inspect", path), errors.EXIT_INPUT)
    assert err.startswith(f"pc: {path}:4: XML syntax error") and "<![CDATA[" in err and "sort.py" in err


@pytest.fixture(scope="module")
def gemma() -> Path:
    if not GEMMA.is_file():
        pytest.skip(f"Gemma 3 270M is not installed at {GEMMA}: `make test` installs it")
    return GEMMA


def test_nested_role_tags_with_a_model_without_chat_template(gemma, tmp_path):
    nested = write_schema(tmp_path / "a", """
        <schema name="a"><module name="m"><system>Be brief.</system>Notes about cats.</module></schema>""")
    err = one_line_error(run_pc("ask", "hi", "-s", nested, "--model", gemma), errors.EXIT_MODEL)
    assert "no chat template" in err
    one_line_error(run_pc("inspect", nested, "--model", gemma), errors.EXIT_MODEL)
    users = write_schema(tmp_path / "b", """
        <schema name="b"><module name="m">Cats sleep a lot. <user>Tell me about cats.</user></module></schema>""")
    rows = ok(run_pc("inspect", users, "--model", gemma, "--json")).json()["elements"]
    assert [r["kind"] for r in rows if r["kind"] in ("role", "module")] == ["module", "role"]
    out = ok(run_pc("ask", "Question: do cats sleep? Answer:", "-s", users, "--model", gemma, "-n", "6", "--json",
                    cache_dir=tmp_path / "c")).json()
    assert out["mode"] == "prefix" and out["generated_tokens"] >= 1
