import os
import time

import pytest

from promptcache_cli.pml.schema import MAX_PARAMETER_LENGTH, MAX_SCHEMA_BYTES, Module, ModuleImport, Parameter, PmlError, Prompt, Role, Schema, Text, Union, load_prompt, load_schema, parse_prompt, parse_schema

TRAVEL = """\
<schema name="travel">
  <system>You are a travel planner.</system>
  <user>
  <module name="trip-plan">
    I'm planning a trip lasting <parameter name="duration" length="5"/>.
    <union scaffold="domestic">
      <module name="domestic">Stay in the city of <parameter name="city" length="10"/>.</module>
      <module name="overseas">
        <union>
          <module name="maldives">Beaches ...</module>
          <module name="tokyo">Temples ...</module>
        </union>
      </module>
    </union>
  </module>
  <module name="manual" src="docs/manual.txt"/>
  </user>
</schema>
"""

PROMPT = """\
<prompt schema="travel">
  <trip-plan duration="3 days"><domestic city="Rome"/></trip-plan>
  Highlight the surf spots.
</prompt>
"""


def schema_error(text, **kwargs) -> PmlError:
    with pytest.raises(PmlError) as info:
        parse_schema(text, **kwargs)
    return info.value


def prompt_error(text, **kwargs) -> PmlError:
    with pytest.raises(PmlError) as info:
        parse_prompt(text, **kwargs)
    return info.value


def wrap(body: str) -> str:
    return f'<schema name="s">{body}</schema>'


@pytest.fixture
def travel_dir(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "manual.txt").write_text("\n  Read the manual.\n  Twice.\n\n")
    (tmp_path / "travel.xml").write_text(TRAVEL)
    return tmp_path


# --- the travel example from pml.md --------------------------------------------------------


def test_travel_example_tree(travel_dir):
    schema = load_schema(travel_dir / "travel.xml")
    assert schema.name == "travel"
    assert schema.path == str(travel_dir / "travel.xml")
    system, user = schema.children
    assert system == Role("system", (Text("You are a travel planner.", 2),), 2)
    assert user.role == "user" and user.line == 3
    trip, sep, manual = user.children
    assert sep == Text("\n", 15)
    assert manual == Module("manual", (Text("Read the manual.\n  Twice.", 16),),
                            "docs/manual.txt", 16)
    assert trip.name == "trip-plan" and trip.src is None and trip.line == 4
    intro, duration, dot, union = trip.children
    assert intro == Text("I'm planning a trip lasting ", 5)
    assert duration == Parameter("duration", 5, None, 5)
    assert dot == Text(".\n    ", 5)
    assert isinstance(union, Union) and union.scaffold == "domestic" and union.line == 6
    domestic, overseas = union.members
    assert domestic == Module("domestic", (Text("Stay in the city of ", 7),
                                           Parameter("city", 10, None, 7), Text(".", 7)), None, 7)
    (inner,) = overseas.children
    assert inner == Union((Module("maldives", (Text("Beaches ...", 10),), None, 10),
                           Module("tokyo", (Text("Temples ...", 11),), None, 11)), None, 9)


def test_travel_example_parse_schema_with_base_dir(travel_dir):
    schema = parse_schema(TRAVEL.encode(), path="t.xml", base_dir=str(travel_dir))
    assert schema == Schema(schema.name, load_schema(travel_dir / "travel.xml").children, "t.xml")


def test_trees_are_frozen_tuples(travel_dir):
    schema = load_schema(str(travel_dir / "travel.xml"))
    assert isinstance(schema.children, tuple)
    with pytest.raises(AttributeError):
        schema.name = "other"
    hash(schema)


# --- text normalization ----------------------------------------------------------------------


def test_text_trim_and_separators():
    schema = parse_schema(
        '<schema name="s">\n\n   Intro  text\n  <module name="a"> A </module>\n  \n'
        '  <module name="b">B</module> <module name="c">C</module>'
        '<module name="d">D</module>  tail \n\n</schema>')
    texts = [c for c in schema.children if isinstance(c, Text)]
    assert [t.text for t in texts] == ["Intro  text\n  ", "\n", " ", "  tail"]
    assert texts[0].line == 3
    assert schema.children[1].children == (Text("A", 4),)


def test_whitespace_only_at_container_edges_dropped():
    schema = parse_schema(wrap('\n  <module name="a">\n  <parameter name="p" length="2"/>\n'
                               '  </module>\n'))
    (module,) = schema.children
    assert module.children == (Parameter("p", 2, None, 3),)


def test_text_after_leading_element_keeps_its_space():
    (module,) = parse_schema(wrap('<module name="a"><parameter name="p" length="2"/> days\n'
                                  '</module>')).children
    assert module.children[1] == Text(" days", 1)


def test_adjacent_runs_merge_and_cdata_code():
    code = "if a < b && c > d:\n    print('<tag>')"
    schema = parse_schema(wrap(f"x &lt; y &amp; <![CDATA[{code}]]><!-- c --> end"))
    assert schema.children == (Text(f"x < y & {code} end", 1),)


def test_cdata_inside_module_kept_verbatim():
    body = '<module name="code"><![CDATA[\n  int main() { return a<b && b>c; }\n]]></module>'
    (module,) = parse_schema(wrap(body)).children
    assert module.children == (Text("int main() { return a<b && b>c; }", 2),)


def test_role_schema_drops_root_whitespace_and_keeps_role_text():
    schema = parse_schema('<schema name="s">\n <system> Be brief. </system>\n\n'
                          ' <user>\n  Hi <module name="m">M</module>\n </user>\n</schema>')
    system, user = schema.children
    assert system.children == (Text("Be brief.", 2),)
    assert user.children[0] == Text("Hi ", 5)
    assert [type(c) for c in schema.children] == [Role, Role]


def test_no_empty_text_nodes():
    schema = parse_schema(wrap('<module name="a"/><module name="b">   </module>'))
    assert schema.children == (Module("a", (), None, 1), Module("b", (), None, 1))


def test_assistant_role_and_unicode():
    schema = parse_schema('<schema name="s"><user>Grüße ✓</user><assistant>OK</assistant>'
                          '</schema>')
    assert [r.role for r in schema.children] == ["user", "assistant"]
    assert schema.children[0].children[0].text == "Grüße ✓"


def test_bom_and_xml_declaration_accepted():
    data = '\ufeff<?xml version="1.0" encoding="UTF-8"?>\n<schema name="s">é</schema>'.encode()
    assert parse_schema(data).children == (Text("é", 2),)


# --- names, scopes, attributes ---------------------------------------------------------------


@pytest.mark.parametrize("name", ["a", "_x", "A.b-c_9", "a" * 128])
def test_valid_names(name):
    assert parse_schema(f'<schema name="{name}">x</schema>').name == name


@pytest.mark.parametrize("name", ["", "9a", "-a", ".a", "a b", "a/b", "é", "a" * 129])
def test_invalid_names(name):
    e = schema_error(wrap(f'<module name="{name}">x</module>'))
    assert "invalid name" in e.message and e.line == 1


def test_invalid_schema_name():
    assert "invalid name" in schema_error('<schema name="1x">x</schema>').message


def test_duplicate_module_in_root_scope_across_roles_and_unions():
    e = schema_error('<schema name="s">\n<user><module name="a">x</module></user>\n'
                     '<assistant><union><module name="a">y</module></union></assistant>\n'
                     '</schema>', path="docs.xml")
    assert str(e) == ("docs.xml:3: <module name=\"a\">: duplicate module name 'a' "
                      "(first defined on line 2)")


def test_duplicate_between_union_member_and_sibling():
    e = schema_error(wrap('<module name="p"><module name="a">x</module>\n'
                          '<union><module name="a">y</module></union></module>'))
    assert "duplicate module name 'a'" in e.message and e.line == 2


def test_same_module_name_in_different_scopes_is_fine():
    schema = parse_schema(wrap('<module name="a"><module name="a">x</module></module>'
                               '<module name="b"><union><module name="a">y</module></union>'
                               '</module>'))
    assert [m.name for m in schema.children] == ["a", "b"]


def test_duplicate_parameter_and_same_parameter_in_other_module():
    e = schema_error(wrap('<module name="m">\n<parameter name="p" length="1"/>'
                          '\n<parameter name="p" length="2"/></module>'))
    assert "duplicate parameter name 'p'" in e.message and e.line == 3
    schema = parse_schema(wrap('<module name="a"><parameter name="p" length="1"/>'
                               '<module name="b"><parameter name="p" length="1"/></module>'
                               '</module>'))
    assert schema.children[0].children[0].name == "p"


@pytest.mark.parametrize("body, attr", [
    ('<module name="a" foo="1">x</module>', "foo"),
    ('<module name="a"><parameter name="p" length="1" size="2"/></module>', "size"),
    ('<union name="u"><module name="a">x</module></union>', "name"),
    ('<user role="x">x</user>', "role"),
])
def test_unknown_attributes(body, attr):
    assert f"unknown attribute '{attr}'" in schema_error(wrap(body)).message


def test_unknown_attribute_on_schema_and_missing_name():
    assert "unknown attribute 'x'" in schema_error('<schema name="s" x="1">t</schema>').message
    assert "missing attribute 'name'" in schema_error("<schema>t</schema>").message
    assert "missing attribute 'name'" in schema_error(wrap("<module>t</module>")).message


def test_unknown_element_and_nested_schema():
    e = schema_error(wrap('\n<module name="a"><b>bold</b></module>'), path="x.xml")
    assert str(e).startswith("x.xml:2: <b>: unknown element <b>")
    assert "<schema> cannot be nested" in schema_error(wrap('<schema name="t">x</schema>')).message


def test_root_must_be_schema():
    e = schema_error('<prompt schema="s">x</prompt>')
    assert "root element must be <schema" in e.message and e.element == '<prompt schema="s">'


# --- parameters ------------------------------------------------------------------------------


def test_parameter_fields():
    (module,) = parse_schema(wrap(
        f'<module name="m"><parameter name="p" length="{MAX_PARAMETER_LENGTH}" scaffold="x y"/>'
        '<parameter name="q" length="007"></parameter></module>')).children
    assert module.children == (Parameter("p", MAX_PARAMETER_LENGTH, "x y", 1),
                               Parameter("q", 7, None, 1))


@pytest.mark.parametrize("length", ["0", str(MAX_PARAMETER_LENGTH + 1), "-1", "1.5", "abc",
                                    "", " 3", "٣"])
def test_bad_parameter_length(length):
    e = schema_error(wrap(f'<module name="m">\n<parameter name="p" length="{length}"/></module>'))
    assert "length must be an integer" in e.message and e.line == 2


def test_parameter_missing_length_or_with_content():
    assert "missing attribute 'length'" in schema_error(
        wrap('<module name="m"><parameter name="p"/></module>')).message
    assert "must be empty" in schema_error(
        wrap('<module name="m"><parameter name="p" length="2">v</parameter></module>')).message


@pytest.mark.parametrize("text", [
    wrap('<parameter name="p" length="1"/>'),
    '<schema name="s"><user><parameter name="p" length="1"/></user></schema>',
])
def test_parameter_outside_module(text):
    assert schema_error(text).message == "parameters must be inside a module"


# --- unions ----------------------------------------------------------------------------------


def test_union_rules():
    assert "at least one" in schema_error(wrap("<union>  </union>")).message
    e = schema_error(wrap('<union>\n<module name="a">x</module>\n text</union>'))
    assert "only <module>" in e.message and e.line == 3
    e = schema_error(wrap('<union><module name="a">x</module><parameter name="p" length="1"/>'
                          '</union>'))
    assert "only <module>" in e.message
    e = schema_error(wrap('<union scaffold="b"><module name="a">x</module></union>'))
    assert "scaffold 'b' is not a member" in e.message


def test_union_without_scaffold_at_root():
    schema = parse_schema(wrap('<union>\n <module name="a">A</module>\n'
                               ' <module name="b">B</module>\n</union>'))
    assert schema.children == (Union((Module("a", (Text("A", 2),), None, 2),
                                      Module("b", (Text("B", 3),), None, 3)), None, 1),)


# --- roles -----------------------------------------------------------------------------------


@pytest.mark.parametrize("text", [
    '<schema name="s"><user><system>x</system></user></schema>',
    '<schema name="s"><user><module name="m"><system>x</system></module></user></schema>',
    wrap('<module name="m"><user><module name="n"><system>x</system></module></user></module>'),
])
def test_role_tags_do_not_nest(text):
    assert "role tags cannot be nested: <system> is inside <user>" in schema_error(text).message


@pytest.mark.parametrize("outside", ['stray text', '<module name="m">x</module>',
                                     '<union><module name="m">x</module></union>'])
def test_content_outside_role(outside):
    e = schema_error(f'<schema name="s">\n<user>hi</user>\n{outside}\n</schema>')
    assert e.message == "content outside a role tag" and e.line == 3


@pytest.mark.parametrize("text", ['<schema name="s"/>', '<schema name="s">\n  \n</schema>',
                                  '<schema name="s"><user> </user><system/></schema>',
                                  '<schema name="s"><!-- only a comment --></schema>'])
def test_empty_schema(text):
    assert schema_error(text).message == "empty schema"


def test_empty_module_is_content():
    assert parse_schema(wrap('<module name="a"/>')).children == (Module("a", (), None, 1),)


# --- syntax, encoding, hardening -------------------------------------------------------------


def test_syntax_error_has_expat_line():
    e = schema_error('<schema name="s">\n<module name="a">\nx\n</schema>', path="bad.xml")
    assert e.file == "bad.xml" and e.line == 4 and "XML syntax error: mismatched tag" in str(e)
    assert str(e).startswith("bad.xml:4: ")


@pytest.mark.parametrize("text", ["", "just text", '<schema name="s">x</schema><x/>',
                                  '<schema name="s">a & b</schema>'])
def test_malformed_xml(text):
    assert "XML syntax error" in schema_error(text).message


def test_undefined_entity_rejected():
    assert "XML syntax error" in schema_error(wrap("&foo;")).message


def test_non_utf8_bytes():
    e = schema_error(b'<schema name="s">\nok\n\xff\xfe</schema>', path="l1.xml")
    assert str(e) == "l1.xml:3: schema is not valid UTF-8"


def test_declared_latin1_is_still_read_as_utf8():
    data = '<?xml version="1.0" encoding="ISO-8859-1"?><schema name="s">é</schema>'.encode()
    assert parse_schema(data).children[0].text == "é"


def test_lone_surrogate_in_str_is_rejected():
    assert "not valid UTF-8" in schema_error(wrap("\ud800")).message


def test_oversize_data():
    data = wrap("x" * MAX_SCHEMA_BYTES)
    assert "larger than" in schema_error(data).message
    assert "larger than" in schema_error(data.encode()).message


def test_billion_laughs_rejected_fast():
    lol = '<!ENTITY lol0 "lol">' + "".join(
        f'<!ENTITY lol{i} "{f"&lol{i - 1};" * 10}">' for i in range(1, 10))
    text = f'<?xml version="1.0"?>\n<!DOCTYPE schema [{lol}]>\n<schema name="s">&lol9;</schema>'
    start = time.monotonic()
    e = schema_error(text)
    assert time.monotonic() - start < 1.0
    assert "not allowed" in e.message and e.line == 2


def test_external_entity_rejected(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP SECRET")
    text = (f'<!DOCTYPE schema [<!ENTITY x SYSTEM "file://{secret}">]>'
            '<schema name="s">&x;</schema>')
    e = schema_error(text)
    assert "not allowed" in e.message and "TOP SECRET" not in str(e)


def test_plain_doctype_rejected():
    assert "not allowed" in schema_error('<!DOCTYPE schema><schema name="s">x</schema>').message


def test_excessive_nesting_rejected():
    text = wrap("".join(f'<module name="m{i}">' for i in range(200)) + "x"
                + "</module>" * 200)
    assert "nested deeper" in schema_error(text).message


def test_error_string_formats():
    assert str(PmlError("m", file="f", line=3, element="<x>")) == "f:3: <x>: m"
    assert str(PmlError("m", file="f")) == "f: m"
    assert str(PmlError("m", line=3)) == "line 3: m"
    assert str(PmlError("m")) == "m"
    e = schema_error(wrap('\n<module name="a"><zz/></module>'))
    assert str(e) == ("line 2: <zz>: unknown element <zz> (allowed: module, union, parameter, "
                      "system, user, assistant)")
    assert "\n" not in str(schema_error(wrap('<module name="a\nb">x</module>')))


# --- src -------------------------------------------------------------------------------------


def src_schema(src: str) -> str:
    return wrap(f'\n<module name="m" src="{src}"/>')


def src_error(tmp_path, src: str) -> PmlError:
    e = schema_error(src_schema(src), path="s.xml", base_dir=str(tmp_path))
    assert e.file == "s.xml" and e.line == 2 and e.element == '<module name="m">'
    return e


def test_src_text_verbatim_and_stripped(tmp_path):
    (tmp_path / "code.txt").write_text("\ufeff\n  a < b && <tag> &amp;\n\n", encoding="utf-8")
    schema = parse_schema(src_schema("code.txt"), base_dir=str(tmp_path))
    assert schema.children == (Module("m", (Text("a < b && <tag> &amp;", 2),), "code.txt", 2),)


def test_src_empty_file_gives_no_text(tmp_path):
    (tmp_path / "empty.txt").write_text("  \n")
    (module,) = parse_schema(src_schema("empty.txt"), base_dir=str(tmp_path)).children
    assert module.children == ()


def test_src_needs_base_dir():
    assert "src needs the schema's folder" in schema_error(src_schema("a.txt")).message


def test_src_module_must_be_empty(tmp_path):
    (tmp_path / "a.txt").write_text("A")
    e = schema_error(wrap('<module name="m" src="a.txt">text</module>'), base_dir=str(tmp_path))
    assert "must be empty" in e.message
    schema = parse_schema(wrap('<module name="m" src="a.txt">\n</module>'),
                          base_dir=str(tmp_path))
    assert schema.children[0].children == (Text("A", 1),)


def test_src_absolute_path_refused(tmp_path):
    (tmp_path / "a.txt").write_text("A")
    assert "must be a relative path" in src_error(tmp_path, str(tmp_path / "a.txt")).message
    assert "must be a relative path" in src_error(tmp_path, "").message


def test_src_dotdot_escape_refused(tmp_path):
    base = tmp_path / "base"
    base.mkdir()
    (tmp_path / "secret.txt").write_text("SECRET")
    e = src_error(base, "../secret.txt")
    assert "outside the schema's folder" in e.message and "SECRET" not in str(e)
    assert "outside" in src_error(base, "sub/../../secret.txt").message


def test_src_symlink_escape_refused_but_inner_symlink_ok(tmp_path):
    base = tmp_path / "base"
    base.mkdir()
    (tmp_path / "secret.txt").write_text("SECRET")
    (base / "link.txt").symlink_to(tmp_path / "secret.txt")
    (base / "real.txt").write_text("inside")
    (base / "ok.txt").symlink_to(base / "real.txt")
    assert "outside the schema's folder" in src_error(base, "link.txt").message
    schema = parse_schema(src_schema("ok.txt"), base_dir=str(base))
    assert schema.children[0].children[0].text == "inside"


def test_src_subfolder_of_symlinked_base(tmp_path):
    real = tmp_path / "real"
    (real / "docs").mkdir(parents=True)
    (real / "docs" / "a.txt").write_text("A")
    (tmp_path / "alias").symlink_to(real)
    schema = parse_schema(src_schema("docs/a.txt"), base_dir=str(tmp_path / "alias"))
    assert schema.children[0].children[0].text == "A"


def test_src_directory_refused(tmp_path):
    (tmp_path / "dir").mkdir()
    assert "not a regular file" in src_error(tmp_path, "dir").message
    assert "not a regular file" in src_error(tmp_path, ".").message


def test_src_fifo_refused_without_blocking(tmp_path):
    os.mkfifo(tmp_path / "pipe")
    assert "not a regular file" in src_error(tmp_path, "pipe").message


def test_src_device_symlink_refused(tmp_path):
    (tmp_path / "zero").symlink_to("/dev/zero")
    assert "outside the schema's folder" in src_error(tmp_path, "zero").message


def test_src_missing_file(tmp_path):
    assert src_error(tmp_path, "nope.txt").message == "src 'nope.txt': file not found"


def test_src_binary_file(tmp_path):
    (tmp_path / "bin").write_bytes(b"abc\x00def")
    assert src_error(tmp_path, "bin").message == "src 'bin': binary file"


def test_src_non_utf8(tmp_path):
    (tmp_path / "latin.txt").write_bytes(b"ok\ncaf\xe9\n")
    assert src_error(tmp_path, "latin.txt").message == "src 'latin.txt': not valid UTF-8 (line 2)"


def test_src_oversize(tmp_path):
    with open(tmp_path / "big.txt", "wb") as f:
        f.truncate(MAX_SCHEMA_BYTES + 1)
    assert "larger than" in src_error(tmp_path, "big.txt").message


def test_src_exactly_max_size_ok(tmp_path):
    (tmp_path / "max.txt").write_bytes(b"a" * MAX_SCHEMA_BYTES)
    (module,) = parse_schema(src_schema("max.txt"), base_dir=str(tmp_path)).children
    assert len(module.children[0].text) == MAX_SCHEMA_BYTES


# --- load_schema -----------------------------------------------------------------------------


def test_load_schema_errors(tmp_path):
    with pytest.raises(PmlError, match="file not found"):
        load_schema(tmp_path / "missing.xml")
    with pytest.raises(PmlError, match="not a regular file"):
        load_schema(tmp_path)
    os.mkfifo(tmp_path / "pipe.xml")
    with pytest.raises(PmlError, match="not a regular file"):
        load_schema(tmp_path / "pipe.xml")


def test_load_schema_oversize_sparse_file(tmp_path):
    path = tmp_path / "big.xml"
    with open(path, "wb") as f:
        f.truncate(64 * MAX_SCHEMA_BYTES)
    start = time.monotonic()
    with pytest.raises(PmlError) as info:
        load_schema(path)
    assert time.monotonic() - start < 1.0
    assert str(info.value) == f"{path}: larger than {MAX_SCHEMA_BYTES} bytes"


def test_load_schema_error_names_file_and_line(tmp_path):
    path = tmp_path / "dup.xml"
    path.write_text('<schema name="s">\n<module name="a">x</module>\n'
                    '<module name="a">y</module>\n</schema>')
    with pytest.raises(PmlError) as info:
        load_schema(path)
    assert str(info.value).startswith(f'{path}:3: <module name="a">: duplicate module name')


# --- prompts ---------------------------------------------------------------------------------


def test_prompt_example():
    prompt = parse_prompt(PROMPT)
    assert prompt == Prompt("travel", (
        ModuleImport("trip-plan", (("duration", "3 days"),),
                     (ModuleImport("domestic", (("city", "Rome"),), (), 2),), 2),
    ), "Highlight the surf spots.")


def test_prompt_params_keep_order_and_entities():
    prompt = parse_prompt('<prompt schema="s"><m b="2" a="x &amp; &lt;y&gt;"/></prompt>')
    assert prompt.imports[0].params == (("b", "2"), ("a", "x & <y>"))
    assert prompt.question == ""


def test_prompt_without_imports_is_all_question():
    prompt = parse_prompt('<prompt schema="s">\n  What is <![CDATA[a<b && c]]>?\n</prompt>')
    assert prompt.imports == () and prompt.question == "What is a<b && c?"


def test_prompt_question_spans_comments():
    prompt = parse_prompt('<prompt schema="s"><a/> one <!-- c --> two </prompt>')
    assert prompt.question == "one  two"


def test_prompt_text_before_last_import():
    e = prompt_error('<prompt schema="s">\n<a/>\n  early\n<b/> late</prompt>', path="p.xml")
    assert str(e) == 'p.xml:3: <prompt schema="s">: text must follow the last import'


def test_prompt_text_inside_import():
    e = prompt_error('<prompt schema="s"><a>\n<b/>\n oops</a></prompt>')
    assert "text is not allowed inside an import" in e.message and e.line == 3
    assert e.element == "<a>"


def test_prompt_nested_whitespace_is_fine():
    prompt = parse_prompt('<prompt schema="s">\n <a>\n  <b x="1">\n  </b>\n </a>\n</prompt>')
    assert prompt.imports == (ModuleImport("a", (), (ModuleImport("b", (("x", "1"),), (), 3),), 2),)


@pytest.mark.parametrize("text, message", [
    ('<schema name="s">x</schema>', "root element must be <prompt"),
    ("<prompt>q</prompt>", "missing attribute 'schema'"),
    ('<prompt schema="s" x="1">q</prompt>', "unknown attribute 'x'"),
    ('<prompt schema="9s">q</prompt>', "invalid name"),
    ('<prompt schema="s"><a:b xmlns:a="urn:x"/></prompt>', "invalid name"),
    ('<prompt schema="s"><a>', "XML syntax error"),
    ('<!DOCTYPE prompt><prompt schema="s">q</prompt>', "not allowed"),
    (b'<prompt schema="s">\xc3</prompt>', "not valid UTF-8"),
])
def test_prompt_errors(text, message):
    assert message in prompt_error(text).message


def test_prompt_oversize():
    assert "larger than" in prompt_error(
        '<prompt schema="s">' + "q" * MAX_SCHEMA_BYTES + "</prompt>").message


def test_load_prompt(tmp_path):
    path = tmp_path / "p.xml"
    path.write_text(PROMPT)
    assert load_prompt(path) == parse_prompt(PROMPT)
    with pytest.raises(PmlError, match="file not found"):
        load_prompt(tmp_path / "missing.xml")
    path.write_text('<prompt schema="s">\n<a>x</a></prompt>')
    with pytest.raises(PmlError, match=rf"^{path}:2: <a>: text is not allowed"):
        load_prompt(path)
