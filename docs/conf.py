"""Sphinx configuration of littlehelp's documentation site: `make docs` builds it into docs/_build/html.

Pages are MyST Markdown; the API reference is generated from the docstrings (autodoc). The build is
strict (`make docs` and the test run sphinx-build -W -n): a broken link, a page left out of every
table of contents or an unresolved reference to littlehelp's own API fails it.
"""

import importlib.metadata

project = "littlehelp"
author = "the littlehelp developers"
release = importlib.metadata.version("littlehelp")
extensions = ["myst_parser", "sphinx.ext.autodoc", "sphinx.ext.autosummary", "sphinx.ext.napoleon"]
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
exclude_patterns = ["_build"]
myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3
html_theme = "sphinx_book_theme"
html_title = "littlehelp"
html_theme_options = {"show_toc_level": 2}
autodoc_default_options = {"members": True, "show-inheritance": False}
autodoc_typehints = "description"
autodoc_member_order = "bysource"
default_role = "code"  # docstrings write `name` for code, as Markdown does
# Type hints name a class by its short name; where two modules define one (Model, DatasetConfig), the
# reference is ambiguous, not missing: those warnings are off, unresolved references still fail.
suppress_warnings = ["ref.python"]
autosummary_generate = True
nitpicky = True
# Types of other libraries (jax, flax, numpy, the standard library, ...) have no inventory here: the
# build is offline, so references to them stay plain text. littlehelp's own must resolve.
# Private base classes (a leading underscore) are not documented either.
nitpick_ignore_regex = [
    (r"py:.*", r"(?!littlehelp|spactor|salt_lm|distillspec|softsrv|active|federated).*"),
    (r"py:.*", r".*\._\w+"),
]
