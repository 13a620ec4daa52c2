"""Evaluation, in one package (docs: README "Evaluation").

- :mod:`blade.eval.config`: ``EvalConfig`` and the names of the rows no method trains;
- :mod:`blade.eval.recs`: the public recommendations file format (write, read, check);
- :mod:`blade.eval.lists`: producing lists — a policy's greedy and sampled lists, Best-of-N over
  π_ref, the classic reference rows (:mod:`blade.eval.sasrec` among them);
- :mod:`blade.eval.scoring`: scoring lists into ``per_user.parquet`` and ``metrics.json``, a row on
  every split, the per-step snapshot curve;
- :mod:`blade.eval.selection`: model selection on the valid split (SFT and alignment alike).

Everything takes a loaded :class:`blade.data.PreparedData`; nothing here reads a dataset path.
"""
