"""Built-in task plugins and their objectives (installed as ``mobench.tasks``).

Plugin modules (each has a hook implementation): ``hh`` and ``summarize`` (the tasks), ``objectives``
(every built-in objective, its direction declared once, with its scorer per scale) and ``commands``
(``mobench objectives eval``). Public helper modules (no hooks, so not plugins): ``common`` (the
declaration and assembly shared by the built-in tasks), ``sources`` (their data sets, read with
:mod:`mobench.data`), ``data`` (their prompts and preference pairs) and ``chats`` (HH transcripts and the
conversation behind a templated prompt).
"""
