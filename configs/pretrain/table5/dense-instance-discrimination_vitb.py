# Table 2 (h) / Table 5, "Dense Instance Discrimination" (DenseCL-like):
# input = view 2 (full), target = dense momentum features of view 1; each
# prediction must pick its own patch's feature among all positions of that
# target image (the other positions are the negatives): Boltzmann posterior
# over positions, cosine energies at τ = 0.2.
_base_ = './dense-distillation_vitb.py'
model = dict(
    mixer=dict(target_views=('different', 'different')),
    image_posterior=dict(
        _delete_=True,
        type='DenseBoltzmannPosterior',
        normalize=True,
        temperature=0.2))
