"""Imported last by a warm fork server (devtools/forked.py `use_warm_fork_server`): moves every object the server's
preloads made into the garbage collector's permanent generation (`gc.freeze`), so that a forked child's collections
neither walk nor write to the inherited heap (torch, transformers, DeepSpeed, ...). A full collection in a child
otherwise visits all of it and, by updating each object's GC header, copies its pages (copy-on-write): DeepSpeed's
ZeRO-3 set-up calls gc.collect() per parameter group, a quarter of the CPU of a tiny 2-rank ZeRO-3 run. Python's
documented use of gc.freeze: https://docs.python.org/3/library/gc.html#gc.freeze"""
import gc

gc.collect()
gc.freeze()
