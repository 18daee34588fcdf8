"""Support-ticket triage: each ticket becomes exactly one of bug, feature, billing, other."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from runner import InvalidResult, Job, content_of, first_choice
from runner.job.definition import system_and_text

# Each label with descriptions and invented example tickets (English and Chinese, none from data/):
# the offline model (local/zero-shot) picks the label whose phrases are nearest to the ticket.
LABELS: dict[str, list[str]] = {
    "bug": [
        # descriptions and short phrases
        "Bug report: something in the app is broken, crashes, shows an error or behaves incorrectly.",
        "The app crashes or freezes when I open this screen",
        "I get an error when I click save, nothing happens",
        "This button stopped working after the latest update",
        "My data disappeared or was lost after syncing",
        "The numbers and counts shown are wrong, they don't match",
        "Notifications are not being delivered or link to the wrong item",
        "The page shows error 500 / Something went wrong",
        "The mobile app and the web app show different status",
        "Dates and times are displayed in the wrong time zone",
        "Items appear twice, duplicated, or in the wrong order",
        "Attachments and files cannot be opened, access denied error",
        "The integration posts incorrect content",
        "故障报告：软件出错、崩溃、闪退或者功能不能正常使用。",
        "App 一打开就闪退或者卡死",
        "点击保存没有反应，页面报错",
        "更新之后数据丢失了",
        "显示的数据不对，数量对不上",
        "手机和电脑上显示的状态不一致，同步有问题",
        "页面报错 500，按钮点了没反应",
        "时间显示错误，日期不对",
        "任务重复出现，顺序错乱",
        "文件打不开，显示乱码或方框",
        # example tickets
        "When I drag a card to the Done column it jumps back to In Progress after a second.",
        "Since this morning the web app shows a blank white page after login. Chrome 125 on Windows.",
        "Comments I post on Android never show up on the desktop app.",
        "The CSV export is missing every task created after March.",
        "Email reminders arrive a day late, the due date is correct in the app.",
        "Mentions with @ don't notify the person anymore.",
        "Search returns no results for tasks I can clearly see on the board.",
        "I deleted a label but it still appears on old tasks and I can't remove it.",
        "Every time I rename a project the app logs me out.",
        "The recurring task was created three times on Monday instead of once.",
        "拖动卡片到“已完成”之后，过一秒又自己跳回“进行中”。",
        "今天早上开始网页版登录后一片空白，什么都不显示。",
        "在安卓上发的评论，电脑端看不到。",
        "导出的 Excel 少了很多任务，三月以后的都没有。",
        "提醒邮件总是晚一天才收到，截止日期明明是对的。",
        "@ 同事以后对方收不到通知了。",
        "搜索框搜不到任务，但是看板上明明有。",
        "每次重命名项目都会被强制退出登录。",
        "iPad 上横屏的时候侧边栏把内容挡住了，点不了。",
        "上传图片一直转圈，最后提示上传失败。",
    ],
    "feature": [
        # descriptions and short phrases
        "Feature request: a suggestion to add new functionality or improve the product.",
        "Please add dark mode",
        "It would be great if you could add an integration with another app",
        "Feature request: let us export to another format",
        "Could you add a setting so admins can configure this?",
        "Is this on your roadmap? We would really like this feature",
        "Please build a new view for the mobile app",
        "Can you support single sign-on and automatic user provisioning?",
        "I wish there was a way to see who did what",
        "Would love a plugin or API endpoint for this",
        "功能建议：希望增加新功能或改进产品。",
        "希望能增加深色模式",
        "能不能支持和其他软件集成？",
        "建议增加一个可以自定义的设置",
        "能不能出一个桌面客户端或者新的视图",
        "希望尽快加上这个功能",
        "能否开放相关的 API 接口",
        "建议支持更多的安全选项",
        "希望以后可以支持这种用法",
        # example tickets
        "Could you add a way to set recurring tasks on the last business day of the month?",
        "We'd love a Microsoft Teams integration so updates post to our channel.",
        "Please let us color-code projects in the sidebar.",
        "Any plans for an offline mode on desktop?",
        "It would help a lot if we could bulk-edit due dates for many tasks at once.",
        "Can you add custom fields like a dropdown for priority or budget?",
        "Suggestion: allow guests to comment without giving them full access.",
        "Please add a weekly email digest of what changed in my projects.",
        "We need an API endpoint to create time entries programmatically.",
        "Would be nice to have templates for projects we repeat every quarter.",
        "能不能支持月末最后一个工作日重复的任务？",
        "希望能和钉钉打通，任务更新自动推送到群里。",
        "建议侧边栏的项目可以设置不同颜色。",
        "有没有计划做电脑端的离线模式？",
        "希望可以批量修改任务的截止日期。",
        "能不能加自定义字段，比如优先级下拉框、预算金额？",
        "建议访客也可以评论，但不能编辑。",
        "希望每周发一封邮件汇总项目的变化。",
        "希望增加项目模板，每个季度都要重复建一遍太麻烦了。",
        "能不能支持甘特图里直接拖动调整工期？",
    ],
    "billing": [
        # descriptions and short phrases
        "Billing question: payment, invoice, subscription plan, charges, refund, tax, pricing or discount.",
        "I was charged twice, please refund me",
        "I need a copy of my invoice for accounting",
        "How do I cancel or pause my subscription?",
        "My credit card payment failed or was declined",
        "How much does the annual plan cost? Is there a discount?",
        "Please update the billing address and tax ID on our invoices",
        "We removed seats, do we get a prorated credit?",
        "What happens when our free trial ends without a payment method?",
        "Unknown charge on my bank statement",
        "Can we pay by bank transfer or in another currency?",
        "计费问题：付款、发票、订阅套餐、扣费、退款、税费、价格或优惠。",
        "重复扣费了，请退款",
        "请帮我开发票，发票信息要修改",
        "怎么取消或暂停订阅？",
        "信用卡付款失败，扣款不成功",
        "年付多少钱？有没有折扣或优惠？",
        "席位数量和扣费金额不对",
        "试用期到期后会自动扣费或降级吗？",
        "可以对公转账付款吗？",
        "续费价格和之前说好的不一样",
        # example tickets
        "I was charged for 25 seats but we only have 18 active users. Please correct the invoice.",
        "Can you send me a receipt with our VAT number on it?",
        "How do I switch from monthly to annual billing, and will I get credit for this month?",
        "My payment keeps failing even though the card is valid. What should I do?",
        "Do you offer discounts for startups or education?",
        "I cancelled last week but was still charged today. Please refund.",
        "Where can I download all our past invoices?",
        "What is the price per user on the Business plan if we pay yearly?",
        "Can we get a quote for 200 seats for our procurement team?",
        "Our subscription renewed automatically, we wanted to downgrade first. Can you reverse it?",
        "我们只有 18 个人在用，却按 25 个席位扣费了，请更正。",
        "请开一张带税号的增值税专用发票。",
        "怎么从月付改成年付？这个月已经付的钱能抵扣吗？",
        "付款一直失败，卡是好的，怎么办？",
        "学生和创业公司有折扣吗？",
        "上周已经取消订阅了，今天还是被扣款了，请退款。",
        "在哪里下载以前所有的发票？",
        "商业版按年付每个用户多少钱？",
        "我们采购需要一份 200 个席位的报价单。",
        "自动续费了，我们本来想先降级的，能撤销吗？",
    ],
    "other": [
        # descriptions and short phrases
        "General inquiry: not a bug report, not a feature request and not about billing.",
        "Thank you, that fixed it! Great product",
        "Spam, advertising, prize or promotional message",
        "Partnership, reseller, sponsorship or event inquiry",
        "Press interview or media request",
        "Job application or recruiting question",
        "Security questionnaire, compliance certification, GDPR or data privacy request",
        "Where is our data stored and how long is it kept?",
        "How do I change my account email, username or workspace owner?",
        "Someone else logged into my account, suspicious login",
        "Please stop contacting me, not interested",
        "Can we use your logo, do you have a phone number or office?",
        "一般咨询：不是故障、不是功能建议、也不是计费问题。",
        "谢谢，问题已经解决了，你们的产品很好",
        "合作、代理商或者活动赞助咨询",
        "媒体采访、评选邀请",
        "招聘、求职咨询",
        "安全评估问卷、合规认证、数据存储在哪里",
        "请删除我的个人信息",
        "怎么修改注册邮箱或者账号信息？合并账号",
        "您好，请问有人吗？有点事情想问问",
        "有没有使用指南、案例或者客服电话？",
        # example tickets
        "Thanks a lot for the quick help yesterday!",
        "Congratulations, you have been selected for a $1000 gift card, click the link.",
        "Hi, I'm a journalist writing about productivity tools. Could I interview your CEO?",
        "Are you hiring designers? I'd love to send my portfolio.",
        "Do you have a SOC 2 report we can review under NDA?",
        "Please delete my account and all my personal data.",
        "How do I transfer ownership of the workspace to my colleague?",
        "I got a login alert from a device I don't recognize. Was my account hacked?",
        "We'd like to become a reseller in Latin America. Who should I talk to?",
        "Is there a user community or forum where I can ask other customers?",
        "谢谢你们昨天的帮助，回复很快！",
        "恭喜您获得千元购物卡，点击链接领取。",
        "我是一名记者，正在写协作工具的报道，能采访一下你们的 CEO 吗？",
        "你们招设计师吗？想投个简历。",
        "有没有 SOC 2 报告或者等保认证材料可以提供？",
        "请注销我的账号，并删除所有个人数据。",
        "怎么把工作区的所有者转给同事？",
        "收到一个陌生设备的登录提醒，我的账号是不是被盗了？",
        "我们想在华南地区做你们的代理，请问找谁谈？",
        "有没有用户交流群或者社区？",
    ],
}

SYSTEM_PROMPT = """\
You triage customer support tickets for a software company. Put the ticket in exactly one category:
- bug: something is broken, crashes, shows an error, loses or corrupts data, or behaves wrongly
- feature: a request for new functionality or an improvement to existing functionality
- billing: charges, refunds, invoices, payment methods, plans, prices, taxes, subscriptions
- other: anything else (account access, how-to questions, praise, partnerships, spam, shipping, privacy requests)
Tickets may be written in any language. If a ticket mentions several things, choose its main request.
Answer with one lowercase word: bug, feature, billing or other. No punctuation, no explanation."""

_WORD = re.compile(r"[a-z]+")


def build_request(record: Mapping[str, Any]) -> dict[str, Any]:
    """A short, deterministic classification request for one ticket."""
    return {
        "messages": system_and_text(record, SYSTEM_PROMPT),
        "temperature": 0,
        "max_tokens": 5,
    }


def parse_label(body: Mapping[str, Any]) -> str:
    """The one label the answer names ('Bug.', '**billing**', 'Label: other' are accepted)."""
    answer = content_of(body)
    words = _WORD.findall(answer.lower())
    named = {word for word in words if word in LABELS}
    cut = first_choice(body).get("finish_reason") == "length" and words and words[-1] not in LABELS
    if cut and any(label.startswith(words[-1]) for label in LABELS):
        named.add(words[-1] + "…")  # cut off mid-label ("bug and feat"): it may have named two
    if len(named) != 1:
        shown = answer if len(answer) <= 80 else answer[:77] + "..."
        raise InvalidResult(f"expected exactly one of {', '.join(LABELS)}; the model answered {shown!r}")
    return named.pop()


job = Job(
    name="classify",
    model="local/zero-shot",  # offline, no key; MODEL=gpt-4o-mini (or any litellm model) for a provider
    build_request=build_request,
    parse_result=parse_label,
    id_field="id",
    description="support ticket -> bug | feature | billing | other",
    labels=LABELS,
    concurrency=20,
    max_attempts=6,
    timeout=30.0,
)
