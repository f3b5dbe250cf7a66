# The seed document's MNIST training script ("训练快速入门"), assembled from its code blocks and run
# against mlusim's simulated MLU. Only the data source changed: torchvision's MNIST cannot be
# downloaded here, so torch_mlu.data.digits (scikit-learn's bundled digits, resized to 28x28 and
# normalized with the same mean and std) stands in, behind the same DataLoader shape. The epoch
# loop the document describes in words is written out at the end; MLUSIM_EPOCHS / MLUSIM_DEVICE
# (mlu or cpu, for the float baseline) / MLUSIM_LIMIT (training samples) / MLUSIM_SEED are knobs.
import os

# the simulator's numpy work is many small matmuls: BLAS threads spin instead of helping (as in mlusim/cli.py)
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import torch
import numpy as np
from torch.utils.data import DataLoader
# from torchvision.datasets import mnist          (replaced: no download here)
from torch import nn
from torch.autograd import Variable  # noqa: F401  (imported by the seed script)
from torch import optim
# from torchvision import transforms              (replaced: normalization is inside digits())
import torch.nn.functional as F

import torch_mlu.core.mlu_quantize as mlu_quantize
import torch_mlu.core.mlu_model as ct
from torch_mlu.data import digits

ct.set_cnml_enabled(False)

DEVICE = os.environ.get("MLUSIM_DEVICE", "mlu")
torch.manual_seed(int(os.environ.get("MLUSIM_SEED", "0")))
np.random.seed(int(os.environ.get("MLUSIM_SEED", "0")))


class Net(nn.Module):
    def __init__(self):
      super(Net, self).__init__()
      self.conv1 = nn.Conv2d(1, 32, 3, 1)
      self.conv2 = nn.Conv2d(32, 64, 3, 1)
      self.dropout1 = nn.Dropout2d(0.25)
      self.dropout2 = nn.Dropout2d(0.5)
      self.fc1 = nn.Linear(9216, 128)
      self.fc2 = nn.Linear(128, 10)

    def forward(self, x):
      x = self.conv1(x)
      x = F.relu(x)
      x = self.conv2(x)
      x = F.relu(x)
      x = F.max_pool2d(x, 2)
      x = self.dropout1(x)
      x = torch.flatten(x, 1)
      x = self.fc1(x)
      x = F.relu(x)
      x = self.dropout2(x)
      x = self.fc2(x)
      output = F.log_softmax(x, dim=1)
      return output


train_set = digits(train=True)
test_set = digits(train=False)
if os.environ.get("MLUSIM_LIMIT"):
    train_set = torch.utils.data.Subset(train_set, range(int(os.environ["MLUSIM_LIMIT"])))
train_data = DataLoader(train_set, batch_size=64, shuffle=True)
test_data = DataLoader(test_set, batch_size=64, shuffle=False)

net_orig = Net()
if DEVICE == "mlu":
    net_quantize = mlu_quantize.adaptive_quantize(model=net_orig, steps_per_epoch=len(train_data), bitwidth=8)
    net = net_quantize.to(ct.mlu_device())
    optimizer_orig = optim.SGD(net_quantize.parameters(), 1e-1)
    optimizer = ct.to(optimizer_orig, torch.device("mlu"))
    device = ct.mlu_device()
else:                                   # the float baseline: the same script on the CPU
    net = net_orig
    optimizer = optim.SGD(net.parameters(), 1e-1)
    device = torch.device("cpu")

nums_epoch = int(os.environ.get("MLUSIM_EPOCHS", "10"))
save_model = True


def train(model, train_data, optimizer, epoch):
  model = model.train()
  for batch_idx, (img, label) in enumerate(train_data):
      img = img.to(device)
      label = label.to(device)
      optimizer.zero_grad()
      out = model(img)
      loss = F.nll_loss(out, label)
      loss.backward()
      optimizer.step()
      if batch_idx % 100 == 0:
          print('Train Epoch: {} [{}/{} ({:.0f}%)]\tLoss: {:.6f}'.format(
              epoch, batch_idx * len(img), len(train_data.dataset),
              100. * batch_idx / len(train_data), loss.item()))


def validate(val_loader, model):
  test_loss = 0
  correct = 0
  model.eval()
  with torch.no_grad():
      for images, target in val_loader:
          images = images.to(device)
          target = target.to(device)
          output = model(images)
          test_loss += F.nll_loss(output, target, reduction='sum').item()
          pred = output.argmax(dim=1, keepdim=True)
          pred = pred.cpu()
          target = target.cpu()
          correct += pred.eq(target.view_as(pred)).sum().item()
  test_loss /= len(val_loader.dataset)
  print('\nTest set: Average loss: {:.4f}, Accuracy: {}/{} ({:.0f}%)\n'.format(
      test_loss, correct, len(val_loader.dataset),
      100. * correct / len(val_loader.dataset)))
  return correct / len(val_loader.dataset)


for epoch in range(nums_epoch):
    train(net, train_data, optimizer, epoch)
    accuracy = validate(test_data, net)
    if epoch == nums_epoch - 1:
        checkpoint = {"state_dict": net.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch}
        torch.save(checkpoint, 'model.pth')

print(f"final accuracy {accuracy:.4f}")
if DEVICE == "mlu":
    steps = ct.get_training_report()
    mean = {k: float(np.mean([s.get(k, 0) for s in steps])) for k in ("forward", "backward", "update")}
    print("simulated cycles per training step (mean over {} steps): forward {:,.0f}, backward {:,.0f}, "
          "update {:,.0f}".format(len(steps), mean["forward"], mean["backward"], mean["update"]))
