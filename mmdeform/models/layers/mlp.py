from torch import Tensor, nn


class MLP(nn.Module):
    """A stack of ``num_layers`` Linear layers with ReLU between them.

    The box branch of DETR and Deformable DETR: ``MLP(256, 256, 4, 3)``.
    Parameters are named ``layers.{i}.weight``, as in both official repos.
    """

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int) -> None:
        super().__init__()
        dims_in = [input_dim] + [hidden_dim] * (num_layers - 1)
        dims_out = [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(dims_in, dims_out))

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = x.relu()
        return x
