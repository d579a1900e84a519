"""Model families: one module per family, numpy spec first, torch parts imported lazily.

Generic code looks families up in the registry (`cvs_families.registry`) and never names one.
"""
