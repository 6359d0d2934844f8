"""The text the tiny checkpoint's tokenizer learns its vocabulary from: short everyday sentences in English and
Chinese, written for this project. Its only job is to give the tokenizer whole words, so that a random model's
replies read as random words instead of broken bytes; changing it changes every tiny checkpoint's token ids."""

ENGLISH = """\
The sea is calm in the morning and the waves are small.
A red square sits in the middle of the picture, next to a blue circle.
She asked what colour the sky was, and he said it was grey with rain.
Birds sing in the garden while the old dog sleeps in the sun.
The train leaves the city at seven and reaches the mountains by noon.
Please describe the image and answer the question in the recording.
We walked along the river and watched the boats go by.
The music was loud, but the voice of the singer was clear and warm.
There are three apples, two oranges and a green pear on the table.
In winter the lake turns to ice and children skate on it.
A small cat is looking out of the window at the falling snow.
The teacher read a story about a brave fox and a clever bird.
Light comes through the trees and paints the path with gold.
He plays the piano every evening after dinner.
The market is full of fresh bread, fish, rice and tea.
Can you hear the bell? It rings at the top of every hour.
The picture shows a bridge, a tower and many people in the street.
Clouds move fast when the wind is strong.
My friend likes to read books, draw maps and write letters.
The road to the village is long, quiet and beautiful.
A yellow flower grows between the stones near the door.
The answer is simple: look closely and listen carefully.
Stars shine over the desert, and the night is cold.
They built a house of wood on the hill above the farm.
Speech, images and text help the model understand the world.
"""

CHINESE = """\
今天的天气很好，天空是蓝色的。
图片中间有一个红色的正方形，旁边有一个蓝色的圆。
我们沿着河边散步，看着船慢慢地走过。
早上的海很平静，海浪很小。
请描述这张图片，并回答录音里的问题。
小猫坐在窗边，看着外面的雪。
老师给学生讲了一个关于狐狸和小鸟的故事。
市场里有新鲜的面包、鱼、米饭和茶。
火车早上七点离开城市，中午到达山里。
冬天湖面结冰，孩子们在冰上滑冰。
他每天晚饭以后弹钢琴。
花园里的鸟在唱歌，老狗在太阳下睡觉。
桌子上有三个苹果、两个橙子和一个梨。
声音很清楚，音乐也很好听。
这座桥很长，桥上有很多人。
风很大的时候，云走得很快。
我的朋友喜欢看书、画画和写信。
去村子的路很长，也很安静，很美。
门口的石头中间长着一朵黄色的花。
晚上沙漠里很冷，天上有很多星星。
"""
