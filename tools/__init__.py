"""Tools built on top of the library (installed as ``tailorrt.tools``): ``tailor bench`` and its scaling run,
``tailor compare`` and ``tailor report``. They may use everything below them (the core, ``export`` and
``serving``); nothing below imports them."""
