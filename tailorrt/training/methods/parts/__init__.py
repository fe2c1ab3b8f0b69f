"""What the method families of :mod:`tailorrt.training.methods` are built from: NetTailor's student network
(:mod:`.student`) and its selection rule (:mod:`.selection`), the tuned network of the transfer methods
(:mod:`.tuned_net`), channel scales (:mod:`.channel_scales`) and the figures every family draws (:mod:`.pictures`).
Nothing here is registered; a family is one module beside :mod:`~tailorrt.training.methods.base`."""
